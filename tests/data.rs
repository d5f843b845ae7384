//! The MNIST loaders: the real files, both formats, and one malformed file per check, each made here.

use std::io::Write;
use std::path::{Path, PathBuf};

mod common;

use common::FASHION;
use wgcnn::data::{
    class_names, digit_classes, load_csv, load_idx_pair, load_split, read_class_names, Split,
    IMAGE_PIXELS,
};

fn idx_images(count: u32, rows: u32, cols: u32, pixels: &[u8]) -> Vec<u8> {
    let mut out = vec![0, 0, 8, 3];
    for d in [count, rows, cols] {
        out.extend(d.to_be_bytes());
    }
    out.extend(pixels);
    out
}

fn idx_labels(labels: &[u8]) -> Vec<u8> {
    let mut out = vec![0, 0, 8, 1];
    out.extend((labels.len() as u32).to_be_bytes());
    out.extend(labels);
    out
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(bytes).unwrap();
    e.finish().unwrap()
}

fn write(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, bytes).unwrap();
    path
}

fn pixels(count: usize) -> Vec<u8> {
    (0..count * IMAGE_PIXELS)
        .map(|i| (i * 7 % 256) as u8)
        .collect()
}

/// Load an image file and a label file and return the error message, which must name `blamed`.
fn idx_error(images: &[u8], labels: &[u8], blamed: &str) -> String {
    let dir = tempfile::tempdir().unwrap();
    let i = write(dir.path(), "images.idx", images);
    let l = write(dir.path(), "labels.idx", labels);
    let e = load_idx_pair(&i, &l).unwrap_err().to_string();
    assert!(e.contains(blamed), "error should name {blamed}: {e}");
    e
}

#[test]
fn the_shipped_mnist_files_load_with_the_published_checks() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("assets/mnist");
    let train = load_split(&dir, Split::Train).unwrap();
    let test = load_split(&dir, Split::Test).unwrap();
    assert_eq!(train.len(), 60000);
    assert_eq!(test.len(), 10000);
    // From assets/mnist/README.md: the first ten training labels, and the count of zeros.
    assert_eq!(&train.labels[..10], &[5, 0, 4, 1, 9, 2, 1, 3, 1, 4]);
    assert_eq!(train.labels.iter().filter(|&&l| l == 0).count(), 5923);
    assert_eq!(test.labels.iter().filter(|&&l| l == 0).count(), 980);
}

#[test]
fn the_shipped_fashion_mnist_files_load_with_the_published_checks_and_names() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("assets/fashion-mnist");
    let train = load_split(&dir, Split::Train).unwrap();
    let test = load_split(&dir, Split::Test).unwrap();
    assert_eq!((train.len(), test.len()), (60000, 10000));
    assert_eq!(train.images.len(), 60000 * IMAGE_PIXELS);
    assert_eq!(test.images.len(), 10000 * IMAGE_PIXELS);
    // From assets/fashion-mnist/README.md: the first ten labels of each split, and every class
    // with 6000 training and 1000 test images.
    assert_eq!(&train.labels[..10], &[9, 0, 0, 3, 0, 2, 7, 2, 5, 5]);
    assert_eq!(&test.labels[..10], &[9, 2, 1, 1, 6, 1, 4, 6, 5, 7]);
    for (set, each) in [(&train, 6000), (&test, 1000)] {
        let mut histogram = [0usize; 10];
        for &l in &set.labels {
            histogram[l as usize] += 1;
        }
        assert_eq!(histogram, [each; 10], "{}", set.source);
    }
    // Not MNIST under another name: the first training image differs.
    let mnist = load_split(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("assets/mnist"),
        Split::Train,
    )
    .unwrap();
    assert_ne!(train.image(0), mnist.image(0));
    // Its classes.txt names the classes; MNIST's folder has none, so its classes are the digits.
    assert_eq!(class_names(&dir).unwrap(), FASHION);
    let digits = class_names(&Path::new(env!("CARGO_MANIFEST_DIR")).join("assets/mnist")).unwrap();
    assert_eq!(digits, ["0", "1", "2", "3", "4", "5", "6", "7", "8", "9"]);
    assert_eq!(digits, digit_classes());
}

#[test]
fn classes_txt_names_the_classes_and_is_checked() {
    let dir = tempfile::tempdir().unwrap();
    // No classes.txt: the digits.
    assert_eq!(read_class_names(dir.path()).unwrap(), None);
    assert_eq!(class_names(dir.path()).unwrap(), digit_classes());
    // One name a line; a byte-order mark, CRLF line ends, spaces at either end of a line and
    // blank lines at the end are forgiven.
    let text = format!("\u{feff}{}\r\n\r\n\n", FASHION.join("  \r\n "));
    write(dir.path(), "classes.txt", text.as_bytes());
    assert_eq!(class_names(dir.path()).unwrap(), FASHION);
    // Each problem names the file and what was expected.
    let mut dup = FASHION;
    dup[6] = "T-shirt/top";
    let mut control = FASHION;
    control[4] = "Coat\u{1b}[31m";
    let mut tab = FASHION;
    tab[8] = "B\ta\tg";
    let long = "x".repeat(41);
    let mut too_long = FASHION;
    too_long[9] = &long;
    for (content, needle) in [
        (FASHION[..9].join("\n"), "names 9 classes; expected 10"),
        (
            format!("{}\nExtra", FASHION.join("\n")),
            "names 11 classes; expected 10",
        ),
        (
            FASHION.join("\n").replace("Dress", ""),
            "class 3 has an empty name",
        ),
        (
            FASHION.join("\n").replace("Dress", "   "),
            "class 3 has an empty name",
        ),
        (
            control.join("\n"),
            "the name of class 4, \"Coat\\u{1b}[31m\", holds a control character",
        ),
        (tab.join("\n"), "class 8"),
        (
            dup.join("\n"),
            "classes 0 and 6 are both named \"T-shirt/top\"",
        ),
        (
            too_long.join("\n"),
            "the name of class 9 is 41 characters long; expected at most 40",
        ),
        (String::new(), "names 0 classes; expected 10"),
    ] {
        write(dir.path(), "classes.txt", content.as_bytes());
        let e = class_names(dir.path()).unwrap_err().to_string();
        assert!(
            e.contains("classes.txt: ") && e.contains(needle) && e.contains("one name a line"),
            "{needle}: {e}"
        );
    }
    write(dir.path(), "classes.txt", b"\xff\xfe0\n1");
    let e = class_names(dir.path()).unwrap_err().to_string();
    assert!(e.contains("classes.txt: not text"), "{e}");
}

#[test]
fn idx_reads_plain_and_gzip_alike_whatever_the_name() {
    let dir = tempfile::tempdir().unwrap();
    let img = idx_images(3, 28, 28, &pixels(3));
    let lab = idx_labels(&[7, 0, 9]);
    let plain = load_idx_pair(
        &write(dir.path(), "a.gz", &img),
        &write(dir.path(), "b.gz", &lab),
    )
    .unwrap();
    let zipped = load_idx_pair(
        &write(dir.path(), "c", &gzip(&img)),
        &write(dir.path(), "d", &gzip(&lab)),
    )
    .unwrap();
    assert_eq!(plain.images, zipped.images);
    assert_eq!(plain.labels, vec![7, 0, 9]);
    assert_eq!(plain.images, pixels(3));
}

#[test]
fn idx_errors_name_the_file_the_problem_and_the_expectation() {
    let good_images = idx_images(2, 28, 28, &pixels(2));
    let good_labels = idx_labels(&[1, 2]);

    let mut bad_magic = good_images.clone();
    bad_magic[3] = 1;
    let e = idx_error(&bad_magic, &good_labels, "images.idx");
    assert!(
        e.contains("magic number is 0x00000801; expected 0x00000803"),
        "{e}"
    );

    let e = idx_error(&good_images, &good_images, "labels.idx");
    assert!(e.contains("expected 0x00000801"), "{e}");

    let e = idx_error(
        &idx_images(2, 32, 28, &vec![0; 2 * 32 * 28]),
        &good_labels,
        "images.idx",
    );
    assert!(e.contains("images are 32x28; expected 28x28"), "{e}");

    let e = idx_error(
        &good_images[..good_images.len() - 5],
        &good_labels,
        "images.idx",
    );
    assert!(
        e.contains("truncated") && e.contains("expected 2 x 28 x 28 = 1568 bytes"),
        "{e}"
    );

    let e = idx_error(&good_images[..10], &good_labels, "images.idx");
    assert!(e.contains("truncated header"), "{e}");

    let e = idx_error(&good_images[..2], &good_labels, "images.idx");
    assert!(e.contains("too short for an IDX header"), "{e}");

    let mut long = good_images.clone();
    long.extend([1, 2, 3]);
    let e = idx_error(&long, &good_labels, "images.idx");
    assert!(e.contains("too long: 3 unexpected bytes"), "{e}");

    let e = idx_error(&good_images, &idx_labels(&[1, 2, 3]), "labels.idx");
    assert!(
        e.contains("holds 3 labels but") && e.contains("holds 2 images"),
        "{e}"
    );

    let e = idx_error(&good_images, &idx_labels(&[1, 12]), "labels.idx");
    assert!(
        e.contains("label 12 at index 1 is out of range; expected 0..=9"),
        "{e}"
    );

    let e = idx_error(&idx_images(0, 28, 28, &[]), &idx_labels(&[]), "images.idx");
    assert!(e.contains("holds no images"), "{e}");

    let mut corrupt = gzip(&good_images);
    let middle = corrupt.len() / 2;
    corrupt.truncate(middle);
    let e = idx_error(&corrupt, &good_labels, "images.idx");
    assert!(e.contains("corrupt gzip stream"), "{e}");

    let mut flipped = gzip(&good_labels);
    let at = flipped.len() - 6; // inside the CRC32 trailer
    flipped[at] ^= 0xff;
    let e = idx_error(&good_images, &flipped, "labels.idx");
    assert!(e.contains("corrupt gzip stream"), "{e}");
}

fn csv_row(label: &str, pixel: &str) -> String {
    let mut row = label.to_string();
    for _ in 0..IMAGE_PIXELS {
        row.push(',');
        row.push_str(pixel);
    }
    row
}

#[test]
fn csv_reads_with_and_without_a_header() {
    let dir = tempfile::tempdir().unwrap();
    let body = format!("{}\n{}\n", csv_row("3", "255"), csv_row("0", "0"));
    let header = format!(
        "label,{}\n",
        (1..=IMAGE_PIXELS)
            .map(|i| format!("p{i}"))
            .collect::<Vec<_>>()
            .join(",")
    );
    let plain = load_csv(&write(dir.path(), "plain.csv", body.as_bytes())).unwrap();
    let with_header = load_csv(&write(
        dir.path(),
        "header.csv",
        (header + &body).as_bytes(),
    ))
    .unwrap();
    assert_eq!(
        plain,
        wgcnn::data::Dataset {
            source: plain.source.clone(),
            ..with_header.clone()
        }
    );
    assert_eq!(plain.labels, vec![3, 0]);
    assert_eq!(plain.image(0), &[255u8; IMAGE_PIXELS][..]);
    assert_eq!(plain.image(1), &[0u8; IMAGE_PIXELS][..]);
    // CRLF line ends and gzip are fine too.
    let crlf = body.replace('\n', "\r\n");
    assert_eq!(
        load_csv(&write(dir.path(), "crlf.csv", &gzip(crlf.as_bytes())))
            .unwrap()
            .labels,
        vec![3, 0]
    );
    // A UTF-8 byte-order mark (as spreadsheets write) does not cost the first image.
    let bom = [&b"\xEF\xBB\xBF"[..], body.as_bytes()].concat();
    assert_eq!(
        load_csv(&write(dir.path(), "bom.csv", &bom))
            .unwrap()
            .labels,
        vec![3, 0]
    );
}

/// A small gzip file that inflates to more than any MNIST file is refused at the bound, not read
/// whole into memory first.
#[test]
fn a_gzip_bomb_is_refused_at_the_bound() {
    let dir = tempfile::tempdir().unwrap();
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    let zeros = vec![0u8; 1 << 20];
    for _ in 0..300 {
        std::io::Write::write_all(&mut e, &zeros).unwrap();
    }
    let bomb = e.finish().unwrap();
    assert!(bomb.len() < 2 << 20, "{}", bomb.len());
    let path = write(dir.path(), "bomb.csv.gz", &bomb);
    let err = load_csv(&path).unwrap_err().to_string();
    assert!(
        err.contains("bomb.csv.gz: inflates to more than 256 MiB"),
        "{err}"
    );
}

#[test]
fn csv_in_a_data_folder_is_found() {
    let dir = tempfile::tempdir().unwrap();
    write(
        dir.path(),
        "mnist_train.csv",
        format!("{}\n", csv_row("5", "1")).as_bytes(),
    );
    write(
        dir.path(),
        "mnist_test.csv",
        format!("{}\n", csv_row("6", "2")).as_bytes(),
    );
    assert_eq!(
        load_split(dir.path(), Split::Train).unwrap().labels,
        vec![5]
    );
    assert_eq!(load_split(dir.path(), Split::Test).unwrap().labels, vec![6]);
}

#[test]
fn csv_errors_name_the_line_and_field() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        (
            csv_row("3", "256"),
            "line 1, field 2 (pixel 0): '256'; expected an integer 0..=255",
        ),
        (csv_row("3", "-1"), "'-1'; expected an integer 0..=255"),
        (csv_row("3", "0.5"), "'0.5'; expected an integer 0..=255"),
        (
            csv_row("10", "0"),
            "line 1, field 1 (label): '10'; expected an integer 0..=9",
        ),
        ("1,2,3".to_string(), "line 1 has 3 fields; expected 785"),
        (String::new(), "holds no image rows"),
    ];
    for (i, (content, expected)) in cases.iter().enumerate() {
        let path = write(dir.path(), &format!("case{i}.csv"), content.as_bytes());
        let e = load_csv(&path).unwrap_err().to_string();
        assert!(
            e.contains(expected) && e.contains(&format!("case{i}.csv")),
            "case {i}: {e}"
        );
    }
    // A bad second row is reported with its own line number.
    let two = format!("{}\n{}\n", csv_row("1", "0"), csv_row("1", "x"));
    let e = load_csv(&write(dir.path(), "two.csv", two.as_bytes()))
        .unwrap_err()
        .to_string();
    assert!(e.contains("line 2, field 2"), "{e}");
    let e = load_csv(&write(dir.path(), "bin.csv", &[0xff, 0xfe, 0x00]))
        .unwrap_err()
        .to_string();
    assert!(e.contains("not text"), "{e}");
}

#[test]
fn missing_files_say_what_was_expected() {
    let dir = tempfile::tempdir().unwrap();
    let e = load_split(dir.path(), Split::Train)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("train-images-idx3-ubyte") && e.contains("mnist_train.csv"),
        "{e}"
    );
    let e = load_split(&dir.path().join("nope"), Split::Test)
        .unwrap_err()
        .to_string();
    assert!(e.contains("no such directory"), "{e}");
    write(
        dir.path(),
        "t10k-images-idx3-ubyte",
        &idx_images(1, 28, 28, &pixels(1)),
    );
    let e = load_split(dir.path(), Split::Test).unwrap_err().to_string();
    assert!(e.contains("no labels file"), "{e}");
}
