//! The meter counts the parse, not the panic hook: a dependency's panic that the parser
//! catches runs the hook first, and with `RUST_BACKTRACE=1` the default hook allocates
//! tens of MB to symbolize a backtrace. Its own binary, because the panic hook is global.

use std::panic::catch_unwind;

use throughline_fuzz::{meter_parsers_only, metered, CountingAlloc};

#[global_allocator]
static ALLOC: CountingAlloc = CountingAlloc;

const HOOK_BYTES: usize = 32 << 20;

#[test]
fn a_caught_panic_is_metered_without_what_its_hook_allocates() {
    // Stands for the default hook symbolizing a backtrace: it allocates and keeps.
    std::panic::set_hook(Box::new(|_| {
        let kept = vec![7u8; HOOK_BYTES];
        std::mem::forget(std::hint::black_box(kept));
    }));
    let (_, before) = metered(|| catch_unwind(|| panic!("caught by the parser")));
    assert!(
        before >= HOOK_BYTES,
        "the stand-in hook allocates: {before}"
    );

    meter_parsers_only();
    let (caught, after) = metered(|| catch_unwind(|| panic!("caught by the parser")));
    assert!(caught.is_err());
    assert!(after < 1 << 20, "the hook's bytes were metered: {after}");
}
