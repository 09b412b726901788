//! The CONNECT request's `forwarded` and `baggage` headers and its authority, as a peer
//! could send them: never a panic, and what is parsed is a part of the input.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Some((ip, port)) = filters::connect::forwarded_for(text) {
        // The address came from a `for=` value of this header.
        assert!(text.to_ascii_lowercase().contains("for"), "{text:?} gave {ip} {port:?}");
    }
    let members: Vec<_> = filters::connect::baggage(text).collect();
    assert!(members.len() <= filters::connect::MAX_BAGGAGE_MEMBERS);
    for (k, v) in members {
        assert!(text.contains(k) && text.contains(v) && !v.is_empty());
        assert!(!v.contains(';') && !v.contains(','));
    }
    // The CONNECT authority is read as a socket address, as the listener does.
    let _ = text.parse::<std::net::SocketAddr>();
});
