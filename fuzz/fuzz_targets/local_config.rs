//! The local configuration loader on any text: a snapshot or an error that names what is
//! wrong, never a panic or a hang (nesting, size and alias bounds hold).
#![no_main]

use filters::source::SourceOptions;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let options = SourceOptions::default();
    let result = kube_config::parse(text)
        .and_then(|objects| kube_config::translate(&objects, &options, 1, "file:fuzz".into()));
    if let Err(e) = result {
        assert!(!e.to_string().is_empty());
    }
});
