//! Path normalization at every level: a refusal only for an encoded NUL; no dot segments
//! or backslashes left; slashes merged where asked; a second pass changes nothing unless an
//! escape is left (decoding is one pass, as Envoy's); the fast path agrees.
#![no_main]

use filters::authz::path::{is_normal, normalize, Normalization};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(path) = std::str::from_utf8(data) else {
        return;
    };
    for level in [
        Normalization::None,
        Normalization::Base,
        Normalization::MergeSlashes,
        Normalization::DecodeAndMergeSlashes,
    ] {
        let Ok(once) = normalize(path, level) else {
            assert!(path.contains("%00"), "refused {path:?} at {level:?}");
            continue;
        };
        if is_normal(path, level) {
            assert_eq!(once, path, "fast path at {level:?}");
        }
        if level == Normalization::None {
            continue;
        }
        assert!(!once.split('/').any(|s| s == "." || s == ".."), "{path:?} -> {once:?}");
        assert!(!once.contains('\\'), "{path:?} -> {once:?}");
        if level != Normalization::Base {
            assert!(!once.contains("//"), "{path:?} -> {once:?}");
        }
        let twice = normalize(&once, level).expect("a normalized path normalizes");
        if !once.contains('%') {
            assert_eq!(once, twice, "idempotent at {level:?} for {path:?}");
        }
    }
});
