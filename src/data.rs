//! MNIST loading: IDX files (gzip-compressed or not) and the one-image-a-row CSV layout, for
//! MNIST and data sets laid out like it (Fashion-MNIST), and the names of their classes.
//!
//! A data folder names its classes in `classes.txt`, one name a line in label order
//! (`assets/fashion-mnist/classes.txt`); a folder without one holds the digits 0-9, as MNIST.
//!
//! Everything read is checked: the IDX magic number and dimensions, that image and label counts
//! agree, labels in 0..=9, pixel values in 0..=255, files that are truncated or too long, and gzip
//! streams that are corrupt. Every error names the file, what was wrong and what was expected.
//!
//! Images stay as `u8` (60000 images as f32 would exceed the GPU's default storage-binding limit);
//! [`Normalization`] turns a pixel into the network's input value.

use std::fmt;
use std::io::Read;
use std::path::{Path, PathBuf};

/// MNIST images are 28x28; every network in this crate is built for that input.
pub const IMAGE_SIDE: usize = 28;
pub const IMAGE_PIXELS: usize = IMAGE_SIDE * IMAGE_SIDE;
pub const NUM_CLASSES: usize = 10;

const IDX_IMAGES_MAGIC: u32 = 0x0000_0803;
const IDX_LABELS_MAGIC: u32 = 0x0000_0801;
const GZIP_MAGIC: [u8; 2] = [0x1f, 0x8b];

/// A data-loading error: which file, and what was wrong with it compared to what was expected.
#[derive(Debug, Clone, PartialEq)]
pub struct DataError {
    pub path: PathBuf,
    pub problem: String,
}

impl fmt::Display for DataError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path.display(), self.problem)
    }
}

impl std::error::Error for DataError {}

fn err<T>(path: &Path, problem: impl Into<String>) -> Result<T, DataError> {
    Err(DataError {
        path: path.to_path_buf(),
        problem: problem.into(),
    })
}

/// A set of 28x28 grayscale images with their labels, pixels as stored (0-255), row-major.
#[derive(Debug, Clone, PartialEq)]
pub struct Dataset {
    /// `len() * IMAGE_PIXELS` bytes, image after image.
    pub images: Vec<u8>,
    /// One label 0..=9 per image.
    pub labels: Vec<u8>,
    /// Where it came from, for messages.
    pub source: String,
}

impl Dataset {
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    pub fn image(&self, index: usize) -> &[u8] {
        &self.images[index * IMAGE_PIXELS..(index + 1) * IMAGE_PIXELS]
    }

    /// Keep only the first `n` images (all of them if `n` is larger).
    pub fn truncate(&mut self, n: usize) {
        if n < self.len() {
            self.labels.truncate(n);
            self.images.truncate(n * IMAGE_PIXELS);
        }
    }
}

/// How a stored pixel (0-255) becomes an input value: `(pixel / 255 - mean) / std`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Normalization {
    pub mean: f32,
    pub std: f32,
}

impl Normalization {
    /// Pixels scaled to [0, 1]: the default, as in the notebooks.
    pub const UNIT: Normalization = Normalization {
        mean: 0.0,
        std: 1.0,
    };
    /// The mean and standard deviation of the MNIST training set, as PyTorch's examples use.
    pub const STANDARD: Normalization = Normalization {
        mean: 0.1307,
        std: 0.3081,
    };

    pub fn apply(&self, pixel: u8) -> f32 {
        (pixel as f32 / 255.0 - self.mean) / self.std
    }
}

/// The file of a data folder that names its classes: one name a line, in label order (line 1
/// names label 0). A folder without one holds the digits (MNIST): see [`class_names`].
pub const CLASSES_FILE: &str = "classes.txt";

/// The most characters a class name may have (names label tables and plots).
pub const MAX_CLASS_NAME: usize = 40;

/// The class names of a data set without a [`CLASSES_FILE`]: the digits "0" to "9", as MNIST.
pub fn digit_classes() -> Vec<String> {
    (0..NUM_CLASSES).map(|c| c.to_string()).collect()
}

/// What is wrong with `names` as the names of `count` classes, if anything: there must be
/// exactly `count`, each non-blank, at most [`MAX_CLASS_NAME`] characters, without control
/// characters (line breaks, tabs, escapes) and without spaces at either end, and no two alike.
pub fn check_class_names(names: &[String], count: usize) -> Result<(), String> {
    if names.len() != count {
        return Err(format!(
            "names {} classes; expected {count}, one per output of the network, in label order",
            names.len()
        ));
    }
    for (i, name) in names.iter().enumerate() {
        if name.trim().is_empty() {
            return Err(format!("class {i} has an empty name; expected a name"));
        }
        if name.chars().any(char::is_control) {
            return Err(format!(
                "the name of class {i}, {name:?}, holds a control character; expected printable text"
            ));
        }
        if name.trim() != name {
            return Err(format!(
                "the name of class {i}, {name:?}, starts or ends with a space; expected it trimmed"
            ));
        }
        let length = name.chars().count();
        if length > MAX_CLASS_NAME {
            return Err(format!(
                "the name of class {i} is {length} characters long; expected at most {MAX_CLASS_NAME}"
            ));
        }
        if let Some(j) = names[..i].iter().position(|other| other == name) {
            return Err(format!(
                "classes {j} and {i} are both named {name:?}; expected a different name for each"
            ));
        }
    }
    Ok(())
}

/// The class names `dir/classes.txt` gives, or `None` where the folder has no such file. Each
/// line is one name, spaces at either end dropped; the names are checked with
/// [`check_class_names`] for [`NUM_CLASSES`] classes.
pub fn read_class_names(dir: &Path) -> Result<Option<Vec<String>>, DataError> {
    let path = dir.join(CLASSES_FILE);
    if !path.is_file() {
        return Ok(None);
    }
    let bytes = std::fs::read(&path).map_err(|e| DataError {
        path: path.clone(),
        problem: format!("cannot read: {e}"),
    })?;
    let bytes = bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(&bytes);
    let text = match std::str::from_utf8(bytes) {
        Ok(text) => text,
        Err(e) => {
            return err(
                &path,
                format!(
                    "not text (invalid UTF-8 at byte {}); expected one class name a line",
                    e.valid_up_to()
                ),
            )
        }
    };
    let mut names: Vec<String> = text.lines().map(|l| l.trim().to_string()).collect();
    // Blank lines at the end (an editor's) name nothing.
    while names.last().is_some_and(|n| n.is_empty()) {
        names.pop();
    }
    match check_class_names(&names, NUM_CLASSES) {
        Ok(()) => Ok(Some(names)),
        Err(problem) => err(
            &path,
            format!("{problem} (one name a line, line 1 for label 0)"),
        ),
    }
}

/// The class names of the data folder `dir`: those of its `classes.txt`, else the digits.
pub fn class_names(dir: &Path) -> Result<Vec<String>, DataError> {
    Ok(read_class_names(dir)?.unwrap_or_else(digit_classes))
}

/// Which half of MNIST.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Split {
    Train,
    Test,
}

impl Split {
    fn idx_stems(self) -> (&'static [&'static str], &'static [&'static str]) {
        // The names MNIST is distributed under: LeCun's site uses dashes, many mirrors a dot.
        match self {
            Split::Train => (
                &["train-images-idx3-ubyte", "train-images.idx3-ubyte"],
                &["train-labels-idx1-ubyte", "train-labels.idx1-ubyte"],
            ),
            Split::Test => (
                &["t10k-images-idx3-ubyte", "t10k-images.idx3-ubyte"],
                &["t10k-labels-idx1-ubyte", "t10k-labels.idx1-ubyte"],
            ),
        }
    }

    fn csv_names(self) -> &'static [&'static str] {
        match self {
            Split::Train => &["mnist_train.csv", "train.csv"],
            Split::Test => &["mnist_test.csv", "test.csv"],
        }
    }
}

fn find_file(dir: &Path, stems: &[&str]) -> Option<PathBuf> {
    for stem in stems {
        for suffix in ["", ".gz"] {
            let candidate = dir.join(format!("{stem}{suffix}"));
            if candidate.is_file() {
                return Some(candidate);
            }
        }
    }
    None
}

/// Load one split of MNIST from `dir`: the IDX pair if present (gzip or not), else a CSV file.
pub fn load_split(dir: &Path, split: Split) -> Result<Dataset, DataError> {
    if !dir.is_dir() {
        return err(
            dir,
            "no such directory; expected a folder holding the data set's IDX or CSV files (the default is assets/mnist, relative to the current folder)",
        );
    }
    let (image_stems, label_stems) = split.idx_stems();
    let images = find_file(dir, image_stems);
    let labels = find_file(dir, label_stems);
    match (images, labels) {
        (Some(images), Some(labels)) => load_idx_pair(&images, &labels),
        (Some(images), None) => err(
            &images,
            format!(
                "found the images but no labels file beside it; expected one of {} (optionally .gz)",
                label_stems.join(", ")
            ),
        ),
        (None, Some(labels)) => err(
            &labels,
            format!(
                "found the labels but no images file beside it; expected one of {} (optionally .gz)",
                image_stems.join(", ")
            ),
        ),
        (None, None) => {
            for name in split.csv_names() {
                let path = dir.join(name);
                if path.is_file() {
                    return load_csv(&path);
                }
            }
            err(
                dir,
                format!(
                    "no MNIST {} set here; expected {} and {} (optionally .gz) or {}",
                    match split {
                        Split::Train => "training",
                        Split::Test => "test",
                    },
                    image_stems[0],
                    label_stems[0],
                    split.csv_names().join(" or ")
                ),
            )
        }
    }
}

/// The most a gzip-compressed data file may inflate to: twice MNIST's largest file.
const MAX_INFLATED: u64 = 256 << 20;

/// Read a file, un-gzipping it if it starts with the gzip magic (whatever its name says).
pub fn read_maybe_gzip(path: &Path) -> Result<Vec<u8>, DataError> {
    let raw = std::fs::read(path).map_err(|e| DataError {
        path: path.to_path_buf(),
        problem: format!("cannot read: {e}"),
    })?;
    inflate_maybe(path, raw)
}

/// The bytes of a file (`path` names it in errors), un-gzipped if they start with the gzip magic.
pub fn inflate_maybe(path: &Path, raw: Vec<u8>) -> Result<Vec<u8>, DataError> {
    if raw.len() >= 2 && raw[..2] == GZIP_MAGIC {
        let mut out = Vec::new();
        let decoder = flate2::read::MultiGzDecoder::new(&raw[..]);
        // Bounded: a small file that inflates to gigabytes is refused at the bound, not read
        // whole into memory first. MNIST's largest file (the training CSV) is ~110 MB.
        let mut bounded = decoder.take(MAX_INFLATED + 1);
        if let Err(e) = bounded.read_to_end(&mut out) {
            return err(
                path,
                format!("corrupt gzip stream ({e}); expected a complete gzip-compressed IDX file"),
            );
        }
        if out.len() as u64 > MAX_INFLATED {
            return err(
                path,
                format!(
                    "inflates to more than {} MiB; an MNIST file is at most ~110 MiB (not a data set, or a decompression bomb?)",
                    MAX_INFLATED >> 20
                ),
            );
        }
        Ok(out)
    } else {
        Ok(raw)
    }
}

fn be_u32(bytes: &[u8], offset: usize) -> u32 {
    u32::from_be_bytes([
        bytes[offset],
        bytes[offset + 1],
        bytes[offset + 2],
        bytes[offset + 3],
    ])
}

/// Check an IDX header and body length; returns the dimensions.
fn parse_idx_header(
    path: &Path,
    bytes: &[u8],
    expected_magic: u32,
    what: &str,
) -> Result<Vec<usize>, DataError> {
    if bytes.len() < 4 {
        return err(
            path,
            format!(
                "file is {} bytes long, too short for an IDX header; expected at least the 4-byte magic number 0x{expected_magic:08x}",
                bytes.len()
            ),
        );
    }
    let magic = be_u32(bytes, 0);
    if magic != expected_magic {
        return err(
            path,
            format!("magic number is 0x{magic:08x}; expected 0x{expected_magic:08x} (IDX {what})"),
        );
    }
    let ndims = (expected_magic & 0xff) as usize;
    let header_len = 4 + 4 * ndims;
    if bytes.len() < header_len {
        return err(
            path,
            format!(
                "truncated header: file is {} bytes; expected {header_len} bytes of header for {ndims} dimension(s)",
                bytes.len()
            ),
        );
    }
    let dims: Vec<usize> = (0..ndims)
        .map(|d| be_u32(bytes, 4 + 4 * d) as usize)
        .collect();
    let expected_body: usize = dims.iter().product();
    let body = bytes.len() - header_len;
    if body < expected_body {
        return err(
            path,
            format!(
                "truncated: holds {body} bytes of data after the header; expected {} = {expected_body} bytes",
                dims.iter().map(|d| d.to_string()).collect::<Vec<_>>().join(" x ")
            ),
        );
    }
    if body > expected_body {
        return err(
            path,
            format!(
                "too long: {} unexpected bytes after the {expected_body} bytes of data the header announces",
                body - expected_body
            ),
        );
    }
    Ok(dims)
}

/// Parse an IDX image file's bytes (already un-gzipped).
pub fn parse_idx_images(path: &Path, bytes: &[u8]) -> Result<Vec<u8>, DataError> {
    let dims = parse_idx_header(path, bytes, IDX_IMAGES_MAGIC, "images, u8, 3 dimensions")?;
    if dims[1] != IMAGE_SIDE || dims[2] != IMAGE_SIDE {
        return err(
            path,
            format!(
                "images are {}x{}; expected {IMAGE_SIDE}x{IMAGE_SIDE}",
                dims[1], dims[2]
            ),
        );
    }
    Ok(bytes[16..].to_vec())
}

/// Parse an IDX label file's bytes (already un-gzipped).
pub fn parse_idx_labels(path: &Path, bytes: &[u8]) -> Result<Vec<u8>, DataError> {
    parse_idx_header(path, bytes, IDX_LABELS_MAGIC, "labels, u8, 1 dimension")?;
    let labels = bytes[8..].to_vec();
    if let Some(i) = labels.iter().position(|&l| l as usize >= NUM_CLASSES) {
        return err(
            path,
            format!(
                "label {} at index {i} is out of range; expected 0..=9",
                labels[i]
            ),
        );
    }
    Ok(labels)
}

/// Load an IDX image file and its label file, checking that they agree.
pub fn load_idx_pair(images_path: &Path, labels_path: &Path) -> Result<Dataset, DataError> {
    let images = parse_idx_images(images_path, &read_maybe_gzip(images_path)?)?;
    let labels = parse_idx_labels(labels_path, &read_maybe_gzip(labels_path)?)?;
    let image_count = images.len() / IMAGE_PIXELS;
    if image_count != labels.len() {
        return err(
            labels_path,
            format!(
                "holds {} labels but {} holds {image_count} images; expected the same count",
                labels.len(),
                images_path.display()
            ),
        );
    }
    if labels.is_empty() {
        return err(images_path, "holds no images; expected at least one");
    }
    Ok(Dataset {
        images,
        labels,
        source: images_path.display().to_string(),
    })
}

/// Load the CSV layout: one image a row, the label then 784 pixel values 0-255, with or without a
/// header row (recognised by a first field that is not a number). The file may be gzip-compressed.
pub fn load_csv(path: &Path) -> Result<Dataset, DataError> {
    parse_csv(path, &read_maybe_gzip(path)?)
}

/// Parse the CSV layout from bytes (already un-gzipped); `path` names the file in errors.
pub fn parse_csv(path: &Path, bytes: &[u8]) -> Result<Dataset, DataError> {
    // A UTF-8 byte-order mark (spreadsheet exports write one) is not part of the first field.
    let bytes = bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(bytes);
    let text = match std::str::from_utf8(bytes) {
        Ok(text) => text,
        Err(e) => {
            return err(
                path,
                format!(
                    "not text (invalid UTF-8 at byte {}); expected CSV rows of numbers",
                    e.valid_up_to()
                ),
            )
        }
    };
    let mut images = Vec::new();
    let mut labels = Vec::new();
    for (line_index, line) in text.lines().enumerate() {
        let line_number = line_index + 1;
        let line = line.trim_end_matches('\r');
        if line.trim().is_empty() {
            continue;
        }
        let fields: Vec<&str> = line.split(',').map(str::trim).collect();
        if line_index == 0 && fields[0].parse::<f64>().is_err() {
            continue; // a header row such as "label,1x1,1x2,..."
        }
        if fields.len() != 1 + IMAGE_PIXELS {
            return err(
                path,
                format!(
                    "line {line_number} has {} fields; expected {} (the label, then {IMAGE_PIXELS} pixel values)",
                    fields.len(),
                    1 + IMAGE_PIXELS
                ),
            );
        }
        match fields[0].parse::<u8>() {
            Ok(label) if (label as usize) < NUM_CLASSES => labels.push(label),
            _ => {
                return err(
                    path,
                    format!(
                        "line {line_number}, field 1 (label): '{}'; expected an integer 0..=9",
                        fields[0]
                    ),
                )
            }
        }
        for (column, field) in fields[1..].iter().enumerate() {
            match field.parse::<u8>() {
                Ok(pixel) => images.push(pixel),
                Err(_) => {
                    return err(
                        path,
                        format!(
                            "line {line_number}, field {} (pixel {column}): '{field}'; expected an integer 0..=255",
                            column + 2
                        ),
                    )
                }
            }
        }
    }
    if labels.is_empty() {
        return err(path, "holds no image rows; expected at least one");
    }
    Ok(Dataset {
        images,
        labels,
        source: path.display().to_string(),
    })
}
