#![no_main]
// IDX image and label files: any bytes give a dataset or an error, never a panic.
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let path = std::path::Path::new("fuzz.idx");
    let _ = wgcnn::data::parse_idx_images(path, data);
    let _ = wgcnn::data::parse_idx_labels(path, data);
});
