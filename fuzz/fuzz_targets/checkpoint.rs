#![no_main]
// safetensors checkpoints: header, metadata, spec, tensors, optimizer state.
use libfuzzer_sys::fuzz_target;
use wgcnn::network::Shape;

fuzz_target!(|data: &[u8]| {
    let mnist = Shape {
        channels: 1,
        height: 28,
        width: 28,
    };
    let _ = wgcnn::checkpoint::load_bytes(std::path::Path::new("fuzz.safetensors"), data, mnist, None);
});
