//! istiod's resources as arbitrary protobuf: the first byte picks the type (listener,
//! cluster, endpoints), the rest is decoded and translated. Each translates or is refused
//! with a message naming the field; never a panic.
#![no_main]

use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
use envoy_types::pb::envoy::config::listener::v3::Listener;
use libfuzzer_sys::fuzz_target;
use prost::Message;
use xds::translate::{cluster, endpoint, listener};

fuzz_target!(|data: &[u8]| {
    let Some((kind, bytes)) = data.split_first() else {
        return;
    };
    let refused = match kind % 3 {
        0 => Listener::decode(bytes)
            .ok()
            .and_then(|l| listener::convert(&l).err().map(|e| e.to_string())),
        1 => Cluster::decode(bytes)
            .ok()
            .and_then(|c| cluster::convert(&c).err().map(|e| e.to_string())),
        _ => ClusterLoadAssignment::decode(bytes)
            .ok()
            .and_then(|e| endpoint::convert(&e).err().map(|e| e.to_string())),
    };
    if let Some(why) = refused {
        assert!(!why.is_empty());
    }
});
