//! Pictures: training curves, and the confusion matrix with the most confidently misclassified
//! test images. Drawn with `plotters` into memory with a bundled font (DejaVu Sans Mono, so
//! no system fonts are needed), then encoded as PNG and written atomically.

use std::path::Path;
use std::sync::Once;

use anyhow::{anyhow, Result};
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};
use plotters::style::FontStyle;

use crate::checkpoint::write_atomically;
use crate::data::IMAGE_SIDE;
use crate::train::EpochReport;

const FONT: &str = "sans-serif";

fn register_font() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let bytes: &'static [u8] = include_bytes!("../assets/fonts/DejaVuSansMono.ttf");
        plotters::style::register_font(FONT, FontStyle::Normal, bytes).unwrap_or_else(|_| {
            panic!("the bundled font assets/fonts/DejaVuSansMono.ttf is valid")
        });
    });
}

fn err<E: std::fmt::Debug>(what: &str) -> impl Fn(E) -> anyhow::Error + '_ {
    move |e| anyhow!("drawing {what}: {e:?}")
}

/// Encode an RGB buffer as PNG and write it atomically.
pub fn save_png(path: &Path, rgb: Vec<u8>, width: u32, height: u32) -> Result<()> {
    let image = image::RgbImage::from_raw(width, height, rgb)
        .ok_or_else(|| anyhow!("internal: image buffer size"))?;
    let mut bytes = std::io::Cursor::new(Vec::new());
    image
        .write_to(&mut bytes, image::ImageFormat::Png)
        .map_err(|e| anyhow!("{}: cannot encode PNG: {e}", path.display()))?;
    write_atomically(path, &bytes.into_inner())
}

/// Train and test loss (left) and accuracy (right) per epoch.
pub fn training_curves(path: &Path, reports: &[EpochReport], title: &str) -> Result<()> {
    register_font();
    let (width, height) = (1200u32, 500u32);
    let mut rgb = vec![255u8; (width * height * 3) as usize];
    {
        let root = BitMapBackend::with_buffer(&mut rgb, (width, height)).into_drawing_area();
        root.fill(&WHITE).map_err(err("the background"))?;
        let root = root.titled(title, (FONT, 22)).map_err(err("the title"))?;
        let (left, right) = root.split_horizontally(width / 2);
        let epochs = reports.len().max(1) as f64;
        let x_range = if reports.len() > 1 {
            1.0..epochs
        } else {
            0.5..1.5
        };
        let series = |f: fn(&EpochReport) -> f64| -> Vec<(f64, f64)> {
            reports.iter().map(|r| (r.epoch as f64, f(r))).collect()
        };
        type Points = Vec<(f64, f64)>;
        let panels: [(&DrawingArea<_, _>, &str, Points, Points); 2] = [
            (
                &left,
                "loss",
                series(|r| r.train.mean_loss()),
                series(|r| r.test.mean_loss()),
            ),
            (
                &right,
                "accuracy (%)",
                series(|r| 100.0 * r.train.accuracy()),
                series(|r| 100.0 * r.test.accuracy()),
            ),
        ];
        for (area, name, train, test) in panels {
            let values: Vec<f64> = train
                .iter()
                .chain(&test)
                .map(|p| p.1)
                .filter(|v| v.is_finite())
                .collect();
            let (lo, hi) = values
                .iter()
                .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), &v| {
                    (a.min(v), b.max(v))
                });
            let pad = ((hi - lo) * 0.1).max(1e-3);
            let (lo, hi) = if values.is_empty() {
                (0.0, 1.0)
            } else {
                (lo - pad, hi + pad)
            };
            let mut chart = ChartBuilder::on(area)
                .caption(name, (FONT, 18))
                .margin(15)
                .x_label_area_size(40)
                .y_label_area_size(60)
                .build_cartesian_2d(x_range.clone(), lo..hi)
                .map_err(err("the axes"))?;
            chart
                .configure_mesh()
                .x_desc("epoch")
                .x_labels(reports.len().clamp(2, 10))
                .x_label_formatter(&|x| format!("{x:.0}"))
                .label_style((FONT, 13))
                .draw()
                .map_err(err("the grid"))?;
            for (points, label, color) in [(train, "train", BLUE), (test, "test", RED)] {
                chart
                    .draw_series(LineSeries::new(points.clone(), color.stroke_width(2)))
                    .map_err(err("a curve"))?
                    .label(label)
                    .legend(move |(x, y)| {
                        PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
                    });
                chart
                    .draw_series(points.iter().map(|&p| Circle::new(p, 4, color.filled())))
                    .map_err(err("the points"))?;
            }
            chart
                .configure_series_labels()
                .background_style(WHITE.mix(0.8))
                .border_style(BLACK)
                .label_font((FONT, 14))
                .draw()
                .map_err(err("the legend"))?;
        }
        root.present().map_err(err("the picture"))?;
    }
    save_png(path, rgb, width, height)
}

/// One misclassified test image for the grid.
pub struct Mistake<'a> {
    pub pixels: &'a [u8],
    pub label: usize,
    pub predicted: usize,
    pub confidence: f32,
}

/// `name` cut to `max` characters, an ellipsis marking the cut.
fn fit(name: &str, max: usize) -> String {
    if name.chars().count() <= max {
        name.to_string()
    } else {
        let mut cut: String = name.chars().take(max.saturating_sub(1)).collect();
        cut.push('…');
        cut
    }
}

/// The confusion matrix (rows: true class, columns: predicted), its rows and columns labelled
/// with the class names (`names`, in label order; upright digits for MNIST, names turned a
/// quarter under the columns otherwise), and a grid of mistakes captioned with the names.
pub fn evaluation(
    path: &Path,
    confusion: &[[u64; 10]; 10],
    mistakes: &[Mistake<'_>],
    names: &[String],
    title: &str,
) -> Result<()> {
    // The longest label the matrix has room for (about 8 pixels a character at 14 points).
    const LABEL_CHARS: usize = 14;
    let named = names != crate::data::digit_classes();
    let labels: Vec<String> = names.iter().map(|n| fit(n, LABEL_CHARS)).collect();
    let label_area = if named {
        15 + 9 * labels.iter().map(|l| l.chars().count()).max().unwrap_or(1) as u32
    } else {
        35
    };
    register_font();
    let (width, height) = (1300u32, 640u32);
    let mut rgb = vec![255u8; (width * height * 3) as usize];
    {
        let root = BitMapBackend::with_buffer(&mut rgb, (width, height)).into_drawing_area();
        root.fill(&WHITE).map_err(err("the background"))?;
        let root = root.titled(title, (FONT, 22)).map_err(err("the title"))?;
        let (left, right) = root.split_horizontally(640);

        // Confusion matrix: each cell shaded by its share of its row; true classes top to bottom.
        let mut chart = ChartBuilder::on(&left)
            .caption(
                "confusion matrix (rows: true, columns: predicted)",
                (FONT, 16),
            )
            .margin(15)
            .x_label_area_size(label_area)
            .y_label_area_size(label_area)
            .build_cartesian_2d(0f64..10.0, 0f64..10.0)
            .map_err(err("the matrix axes"))?;
        // A label at each cell's centre: the class of column x, or of row y counted from the top.
        let class = |v: f64| -> String {
            let d = v - 0.5;
            if (d - d.round()).abs() < 1e-6 && (0.0..=9.0).contains(&d) {
                labels[d.round() as usize].clone()
            } else {
                String::new()
            }
        };
        chart
            .configure_mesh()
            .disable_mesh()
            .x_labels(21)
            .y_labels(21)
            // Names under the columns are drawn below, turned (plotters centres turned labels
            // on the axis).
            .x_label_formatter(&|x| if named { String::new() } else { class(*x) })
            .y_label_formatter(&|y| class(9.0 - *y + 1.0))
            .label_style((FONT, 14))
            .draw()
            .map_err(err("the matrix labels"))?;
        if named {
            // Each name reads downwards from just below its column.
            let style = (FONT, 14)
                .into_font()
                .transform(FontTransform::Rotate90)
                .color(&BLACK)
                .pos(Pos::new(HPos::Left, VPos::Center));
            let (bx, by) = left.get_base_pixel();
            for (c, label) in labels.iter().enumerate() {
                let (x, y) = chart.backend_coord(&(c as f64 + 0.5, 0.0));
                left.draw(&Text::new(
                    label.clone(),
                    (x - bx, y - by + 8),
                    style.clone(),
                ))
                .map_err(err("a column label"))?;
            }
        }
        let centred = Pos::new(HPos::Center, VPos::Center);
        for (truth, row) in confusion.iter().enumerate() {
            let total = row.iter().sum::<u64>().max(1) as f64;
            for (predicted, &count) in row.iter().enumerate() {
                let share = count as f64 / total;
                let (x, y) = (predicted as f64, 9.0 - truth as f64);
                let shade = (255.0 * (1.0 - share.sqrt())) as u8;
                let color = if truth == predicted {
                    RGBColor(shade, shade, 255)
                } else {
                    RGBColor(255, shade, shade)
                };
                chart
                    .draw_series(std::iter::once(Rectangle::new(
                        [(x, y), (x + 1.0, y + 1.0)],
                        color.filled(),
                    )))
                    .map_err(err("a cell"))?;
                if count > 0 {
                    let text_color = if share > 0.5 { WHITE } else { BLACK };
                    let style = (FONT, 13).into_font().color(&text_color).pos(centred);
                    chart
                        .draw_series(std::iter::once(Text::new(
                            format!("{count}"),
                            (x + 0.5, y + 0.5),
                            style,
                        )))
                        .map_err(err("a count"))?;
                }
            }
        }

        // The most confident mistakes, 4 columns, each image scaled x3.
        right
            .draw(&Text::new(
                "most confident mistakes (true -> predicted, confidence)",
                (10, 10),
                (FONT, 15),
            ))
            .map_err(err("the grid title"))?;
        let scale = 3i32;
        let cell_w = 160i32;
        // Named classes take two lines: "Shirt ->" above "T-shirt/top (98.1%)".
        let cell_h = 28 * scale + if named { 40 } else { 30 };
        for (i, m) in mistakes.iter().enumerate() {
            let (col, row) = ((i % 4) as i32, (i / 4) as i32);
            let (x0, y0) = (10 + col * cell_w, 40 + row * cell_h);
            if y0 + cell_h > height as i32 - 40 {
                break;
            }
            for (p, &v) in m.pixels.iter().enumerate() {
                let (px, py) = ((p % IMAGE_SIDE) as i32, (p / IMAGE_SIDE) as i32);
                let gray = 255 - v;
                right
                    .draw(&Rectangle::new(
                        [
                            (x0 + px * scale, y0 + py * scale),
                            (x0 + (px + 1) * scale, y0 + (py + 1) * scale),
                        ],
                        RGBColor(gray, gray, gray).filled(),
                    ))
                    .map_err(err("a pixel"))?;
            }
            let confidence = format!("({:.1}%)", 100.0 * m.confidence);
            let caption = if named {
                vec![
                    format!("{} ->", fit(&names[m.label], 17)),
                    format!("{} {confidence}", fit(&names[m.predicted], 11)),
                ]
            } else {
                vec![format!("{} -> {} {confidence}", m.label, m.predicted)]
            };
            for (line, text) in caption.into_iter().enumerate() {
                right
                    .draw(&Text::new(
                        text,
                        (x0, y0 + 28 * scale + 4 + 16 * line as i32),
                        (FONT, if named { 13 } else { 14 }),
                    ))
                    .map_err(err("a caption"))?;
            }
        }
        root.present().map_err(err("the picture"))?;
    }
    save_png(path, rgb, width, height)
}
