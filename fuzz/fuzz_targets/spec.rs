#![no_main]
// Network specs: parsing, then resolving shapes for MNIST input (sizes checked before use).
use libfuzzer_sys::fuzz_target;
use wgcnn::network::{Network, Shape};
use wgcnn::spec::NetSpec;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(spec) = NetSpec::parse(text) {
        let mnist = Shape {
            channels: 1,
            height: 28,
            width: 28,
        };
        if let Ok(net) = Network::new(&spec, mnist) {
            let _ = net.memory_estimate();
            let _ = net.check_outputs(10);
        }
    }
});
