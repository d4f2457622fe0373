//! `throughline migrate`: an embedded project into ClickHouse. (in progress)
