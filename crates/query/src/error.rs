//! Query errors: bad input (the caller's to fix) apart from store and backend failures.

use throughline_store::StoreError;

#[derive(Debug, thiserror::Error)]
pub enum QueryError {
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A remote backend (ClickHouse) failed or was unreachable.
    #[error("backend: {0}")]
    Backend(String),
}

impl QueryError {
    pub fn invalid(msg: impl Into<String>) -> QueryError {
        QueryError::Invalid(msg.into())
    }
}
