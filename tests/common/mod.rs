//! Helpers shared by the integration tests: reading fixture files and comparing tensors.
#![allow(dead_code)]

use std::path::PathBuf;
use std::process::{Command, Output};

use safetensors::{Dtype, SafeTensors};

/// A safetensors fixture from `tests/fixtures/`, made by `make_fixtures.py`.
pub struct Fixture {
    bytes: Vec<u8>,
}

impl Fixture {
    pub fn load(name: &str) -> Fixture {
        let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures")
            .join(name);
        let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        Fixture { bytes }
    }

    fn view(&self) -> SafeTensors<'_> {
        SafeTensors::deserialize(&self.bytes).expect("fixture is valid safetensors")
    }

    pub fn has(&self, key: &str) -> bool {
        self.view().tensor(key).is_ok()
    }

    pub fn keys(&self) -> Vec<String> {
        self.view()
            .names()
            .into_iter()
            .map(|s| s.to_string())
            .collect()
    }

    pub fn f32(&self, key: &str) -> Vec<f32> {
        let view = self.view();
        let t = view
            .tensor(key)
            .unwrap_or_else(|_| panic!("fixture has no tensor {key}"));
        assert_eq!(t.dtype(), Dtype::F32, "{key}");
        t.data()
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
            .collect()
    }

    pub fn i64(&self, key: &str) -> Vec<i64> {
        let view = self.view();
        let t = view
            .tensor(key)
            .unwrap_or_else(|_| panic!("fixture has no tensor {key}"));
        match t.dtype() {
            Dtype::I64 => t
                .data()
                .chunks_exact(8)
                .map(|b| i64::from_le_bytes(b.try_into().unwrap()))
                .collect(),
            Dtype::I32 => t
                .data()
                .chunks_exact(4)
                .map(|b| i32::from_le_bytes(b.try_into().unwrap()) as i64)
                .collect(),
            Dtype::U8 => t.data().iter().map(|&b| b as i64).collect(),
            other => panic!("{key}: unexpected dtype {other:?}"),
        }
    }

    pub fn usize(&self, key: &str) -> Vec<usize> {
        self.i64(key).into_iter().map(|v| v as usize).collect()
    }

    pub fn u8(&self, key: &str) -> Vec<u8> {
        self.i64(key).into_iter().map(|v| v as u8).collect()
    }

    pub fn metadata(&self, key: &str) -> String {
        let (_, meta) = SafeTensors::read_metadata(&self.bytes).unwrap();
        meta.metadata()
            .as_ref()
            .and_then(|m| m.get(key).cloned())
            .unwrap_or_else(|| panic!("no metadata {key}"))
    }
}

/// Assert `|actual - expected| <= atol + rtol * |expected|` everywhere. On failure, report the
/// first failing index with both values, and the largest difference over the whole tensor.
pub fn assert_close(what: &str, actual: &[f32], expected: &[f32], atol: f32, rtol: f32) {
    assert_eq!(
        actual.len(),
        expected.len(),
        "{what}: length {} vs. expected {}",
        actual.len(),
        expected.len()
    );
    let mut first_bad = None;
    let mut max_diff = 0.0f32;
    let mut max_at = 0;
    for (i, (&a, &e)) in actual.iter().zip(expected).enumerate() {
        let diff = (a - e).abs();
        if diff > max_diff || diff.is_nan() {
            max_diff = diff;
            max_at = i;
        }
        // Written negated on purpose: a NaN difference fails.
        #[allow(clippy::neg_cmp_op_on_partial_ord)]
        let within = diff <= atol + rtol * e.abs();
        if first_bad.is_none() && !within {
            first_bad = Some(i);
        }
    }
    if let Some(i) = first_bad {
        panic!(
            "{what}: failed at index {i}: computed {} vs. expected {} (largest difference {max_diff} at index {max_at}; tolerance {atol} + {rtol} * |expected|)",
            actual[i], expected[i]
        );
    }
}

/// Run the wgcnn binary from the crate root.
pub fn wgcnn(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_wgcnn"))
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("the binary runs")
}

/// Its stdout and stderr as text.
pub fn text(out: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}
