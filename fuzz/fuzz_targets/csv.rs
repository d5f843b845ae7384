#![no_main]
// The one-image-a-row CSV layout.
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = wgcnn::data::parse_csv(std::path::Path::new("fuzz.csv"), data);
});
