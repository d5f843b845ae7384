#![no_main]
// gzip detection and inflation (bounded), then the IDX parser on what comes out.
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let path = std::path::Path::new("fuzz.gz");
    if let Ok(bytes) = wgcnn::data::inflate_maybe(path, data.to_vec()) {
        let _ = wgcnn::data::parse_idx_images(path, &bytes);
    }
});
