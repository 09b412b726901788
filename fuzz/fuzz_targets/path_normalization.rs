//! Path normalization at every level: refused only for an encoded NUL or a double encoding;
//! no dot segments or backslashes left; slashes merged where asked; a second pass changes
//! nothing; the fast path agrees.
#![no_main]

use filters::authz::path::{is_normal, normalize, InvalidPath, Normalization};
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
        let once = match normalize(path, level) {
            Ok(once) => once,
            Err(InvalidPath::Nul) => {
                assert!(path.contains("%00"), "refused {path:?} at {level:?}");
                continue;
            }
            Err(InvalidPath::DoubleEncoded) => continue,
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
        assert_eq!(once, twice, "idempotent at {level:?} for {path:?}");
    }
});
