//! PNG plots: the ROC curve and the calibration plot of the validation split for the bundle, and
//! models side by side for the replay-as-shadow report, drawn with plotters: axis names and ticks, the figure that sums each up in the title (the AUC;
//! the Brier score and the events per bin), and the labelled diagonal of a useless (ROC) or a
//! perfectly calibrated (calibration) model. Text is DejaVu Sans from the `dejavu` crate,
//! registered with plotters' ab_glyph renderer: no system font is needed, and the same scores
//! draw the same bytes on every machine.

use std::sync::Once;

use anyhow::{Context, Result};
use plotters::coord::types::RangedCoordf64;
use plotters::prelude::*;
use plotters::style::FontStyle;

/// Pixels of a plot.
const SIZE: (u32, u32) = (640, 560);
const CURVE: RGBColor = RGBColor(31, 119, 180);
const REFERENCE: RGBColor = RGBColor(150, 150, 150);
/// The font family the plots ask for.
const FONT: &str = "sans-serif";

/// `(false positive rate, true positive rate)` points of the ROC curve, at most ~500.
pub fn roc_points(scores: &[f64], labels: &[bool]) -> Vec<(f64, f64)> {
    let mut order: Vec<usize> = (0..scores.len()).collect();
    order.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]));
    let pos = labels.iter().filter(|&&y| y).count().max(1) as f64;
    let neg = (labels.len() as f64 - pos).max(1.0);
    let step = (order.len() / 500).max(1);
    let (mut tp, mut fp) = (0.0, 0.0);
    let mut pts = vec![(0.0, 0.0)];
    // A point at the end of each group of tied scores, at least `step` events after the last
    // point (a model with few distinct scores, a tree, has a point at every one of them).
    let mut since = 0;
    for (k, &i) in order.iter().enumerate() {
        if labels[i] {
            tp += 1.0;
        } else {
            fp += 1.0;
        }
        since += 1;
        let tie = order.get(k + 1).is_some_and(|&j| scores[j] == scores[i]);
        if !tie && (since >= step || k + 1 == order.len()) {
            pts.push((fp / neg, tp / pos));
            since = 0;
        }
    }
    pts.push((1.0, 1.0));
    pts
}

/// One bin of the calibration plot.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Bin {
    /// Mean predicted probability of its events.
    pub predicted: f64,
    /// Share of its events that are positive.
    pub observed: f64,
    /// Its events.
    pub events: u64,
}

/// Ten equal-width bins of the predicted probability (empty bins left out).
pub fn calibration_bins(scores: &[f64], labels: &[bool]) -> Vec<Bin> {
    let mut bins = [(0.0, 0.0, 0u64); 10];
    for (&s, &y) in scores.iter().zip(labels) {
        let b = ((s * 10.0) as usize).min(9);
        bins[b].0 += s;
        bins[b].1 += f64::from(u8::from(y));
        bins[b].2 += 1;
    }
    bins.iter()
        .filter(|b| b.2 > 0)
        .map(|b| Bin {
            predicted: b.0 / b.2 as f64,
            observed: b.1 / b.2 as f64,
            events: b.2,
        })
        .collect()
}

/// One model's scores, named for the legend.
pub struct Scored<'a> {
    /// The legend's name for it (e.g. `flights_delay@3 (champion)`).
    pub name: String,
    /// Its score for each event, in the order of the labels.
    pub scores: &'a [f64],
}

/// The ROC curve as a PNG, its AUC in the title.
pub fn roc_png(scores: &[f64], labels: &[bool], auc: f64) -> Result<Vec<u8>> {
    let positives = labels.iter().filter(|&&y| y).count();
    let title = format!("ROC curve, validation split: AUC {auc:.4}");
    let name = format!("{} events, {} positive", scores.len(), positives);
    let models = [Scored { name, scores }];
    render(SIZE, &title, |root| roc_panel(root, "", &models, labels))
}

/// The calibration plot (reliability diagram) as a PNG: each bin's observed rate against its
/// mean predicted probability, with its events beside it; the Brier score in the title.
pub fn calibration_png(scores: &[f64], labels: &[bool], brier: f64) -> Result<Vec<u8>> {
    let title = format!("Calibration, validation split: Brier score {brier:.4}");
    let models = [Scored {
        name: "model (labels: events per bin)".into(),
        scores,
    }];
    render(SIZE, &title, |root| {
        calibration_panel(root, "", &models, labels, true)
    })
}

/// Models side by side on the same labelled events: their ROC curves (AUC in the legend) and
/// their calibration curves, one colour each, under `title`.
pub fn comparison_png(title: &str, models: &[Scored<'_>], labels: &[bool]) -> Result<Vec<u8>> {
    render((SIZE.0 * 2, SIZE.1), title, |root| {
        let (left, right) = root.split_horizontally(SIZE.0);
        let named: Vec<Scored<'_>> = models
            .iter()
            .map(|m| Scored {
                name: format!(
                    "{}: AUC {:.4}",
                    m.name,
                    crate::metrics::roc_auc(m.scores, labels)
                ),
                scores: m.scores,
            })
            .collect();
        roc_panel(&left, "ROC curves", &named, labels)?;
        calibration_panel(&right, "Calibration (10 bins)", models, labels, false)
    })
}

/// One column of a drift report, for [`drift_png`].
pub struct Drifted {
    /// The input's name, or `score`.
    pub name: String,
    /// Its PSI against the reference.
    pub psi: f64,
    /// Past a threshold.
    pub drifted: bool,
}

/// A drift report as a PNG: left, the PSI of the score and of the inputs with the largest
/// (at most 20), largest first, drifted ones in red, with the threshold as a line; right, the
/// score's share of events per reference bin, training split beside the window.
pub fn drift_png(
    title: &str,
    columns: &[Drifted],
    threshold: f64,
    score_reference: &[f64],
    score_window: &[f64],
) -> Result<Vec<u8>> {
    let mut shown: Vec<&Drifted> = columns.iter().collect();
    shown.sort_by(|a, b| b.psi.total_cmp(&a.psi));
    shown.truncate(20);
    render((SIZE.0 * 2, SIZE.1), title, |root| {
        let (left, right) = root.split_horizontally(SIZE.0);
        psi_panel(&left, &shown, threshold)?;
        shares_panel(&right, score_reference, score_window)
    })
}

const DRIFTED: RGBColor = RGBColor(214, 39, 40);

/// Horizontal bars of PSI by column (the first on top), the threshold a dashed vertical line.
fn psi_panel(area: &Area<'_>, columns: &[&Drifted], threshold: f64) -> Drawn {
    let top = columns
        .iter()
        .map(|c| c.psi)
        .fold(threshold * 2.0, f64::max)
        * 1.05;
    let n = columns.len().max(1) as i32;
    // Row r (from the bottom) is column n - 1 - r.
    let name = |r: i32| {
        usize::try_from(n - 1 - r)
            .ok()
            .and_then(|i| columns.get(i))
            .map_or(String::new(), |c| c.name.clone())
    };
    let mut chart = ChartBuilder::on(area)
        .margin(16)
        .margin_right(30)
        .caption("PSI by column, largest first", (FONT, 16))
        .x_label_area_size(48)
        .y_label_area_size(170)
        .build_cartesian_2d(0f64..top, (0..n).into_segmented())?;
    chart
        .configure_mesh()
        .x_desc("population stability index")
        .y_labels(columns.len().max(1))
        .y_label_formatter(&|v| match v {
            SegmentValue::CenterOf(r) => name(*r),
            _ => String::new(),
        })
        .x_label_formatter(&|v| format!("{v:.2}"))
        .label_style((FONT, 12))
        .axis_desc_style((FONT, 15))
        .disable_y_mesh()
        .light_line_style(WHITE)
        .bold_line_style(RGBColor(225, 225, 225))
        .draw()?;
    chart.draw_series(columns.iter().enumerate().map(|(i, c)| {
        let r = n - 1 - i as i32;
        let color = if c.drifted { DRIFTED } else { CURVE };
        let mut bar = Rectangle::new(
            [
                (0.0, SegmentValue::Exact(r)),
                (c.psi, SegmentValue::Exact(r + 1)),
            ],
            color.filled(),
        );
        bar.set_margin(3, 3, 0, 0);
        bar
    }))?;
    chart
        .draw_series(DashedLineSeries::new(
            [
                (threshold, SegmentValue::Exact(0)),
                (threshold, SegmentValue::Last),
            ],
            6,
            4,
            BLACK.stroke_width(1),
        ))?
        .label(format!("threshold {threshold}"))
        .legend(|(x, y)| PathElement::new([(x, y), (x + 20, y)], BLACK));
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::LowerRight)
        .background_style(WHITE.mix(0.9))
        .border_style(RGBColor(200, 200, 200))
        .label_font((FONT, 13))
        .draw()?;
    Ok(())
}

/// The score's share of events per reference bin: training split and window side by side.
fn shares_panel(area: &Area<'_>, reference: &[f64], window: &[f64]) -> Drawn {
    let bins = reference.len().max(window.len()).max(1);
    let top = reference
        .iter()
        .chain(window)
        .copied()
        .fold(0.0, f64::max)
        .max(0.01)
        * 1.1;
    let mut chart = ChartBuilder::on(area)
        .margin(16)
        .margin_right(30)
        .caption("Score: share of events per reference bin", (FONT, 16))
        .x_label_area_size(48)
        .y_label_area_size(56)
        .build_cartesian_2d(0f64..bins as f64, 0f64..top)?;
    chart
        .configure_mesh()
        .x_desc("bin of the training split's score (deciles)")
        .y_desc("share of events")
        .x_labels(bins + 1)
        .x_label_formatter(&|v| format!("{v:.0}"))
        .y_label_formatter(&|v| format!("{v:.2}"))
        .label_style((FONT, 13))
        .axis_desc_style((FONT, 15))
        .light_line_style(WHITE)
        .bold_line_style(RGBColor(225, 225, 225))
        .draw()?;
    for (k, (shares, color, name)) in [
        (reference, REFERENCE, "training split"),
        (window, PALETTE[1], "window"),
    ]
    .into_iter()
    .enumerate()
    {
        let offset = 0.1 + 0.4 * k as f64;
        chart
            .draw_series(shares.iter().enumerate().map(|(i, &v)| {
                let x = i as f64 + offset;
                Rectangle::new([(x, 0.0), (x + 0.4, v)], color.filled())
            }))?
            .label(name)
            .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 14, y + 5)], color.filled()));
    }
    legend(&mut chart, SeriesLabelPosition::UpperRight)
}

/// Colours of the models drawn together, in order.
const PALETTE: [RGBColor; 4] = [
    CURVE,
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
];

type Area<'a> = DrawingArea<BitMapBackend<'a>, plotters::coord::Shift>;
type Chart<'a, 'b> =
    ChartContext<'a, BitMapBackend<'b>, Cartesian2d<RangedCoordf64, RangedCoordf64>>;
type Drawn = Result<(), Box<dyn std::error::Error>>;

/// A ROC panel: the chance diagonal and each model's curve.
fn roc_panel(area: &Area<'_>, caption: &str, models: &[Scored<'_>], labels: &[bool]) -> Drawn {
    let mut chart = unit_chart(area, caption, "false positive rate", "true positive rate")?;
    chart
        .draw_series(LineSeries::new(
            [(0.0, 0.0), (1.0, 1.0)],
            REFERENCE.stroke_width(1),
        ))?
        .label("chance (AUC 0.5)")
        .legend(|(x, y)| PathElement::new([(x, y), (x + 20, y)], REFERENCE));
    for (m, color) in models.iter().zip(PALETTE.iter().cycle()) {
        let color = *color;
        chart
            .draw_series(LineSeries::new(
                roc_points(m.scores, labels),
                color.stroke_width(2),
            ))?
            .label(m.name.clone())
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 20, y)], color.stroke_width(2)));
    }
    legend(&mut chart, SeriesLabelPosition::LowerRight)
}

/// A calibration panel: the diagonal of a perfectly calibrated model and each model's bins
/// (with their counts of events when `counts`).
fn calibration_panel(
    area: &Area<'_>,
    caption: &str,
    models: &[Scored<'_>],
    labels: &[bool],
    counts: bool,
) -> Drawn {
    let mut chart = unit_chart(
        area,
        caption,
        "mean predicted probability (10 bins)",
        "observed positive rate",
    )?;
    chart
        .draw_series(LineSeries::new(
            [(0.0, 0.0), (1.0, 1.0)],
            REFERENCE.stroke_width(1),
        ))?
        .label("perfectly calibrated")
        .legend(|(x, y)| PathElement::new([(x, y), (x + 20, y)], REFERENCE));
    for (m, color) in models.iter().zip(PALETTE.iter().cycle()) {
        let color = *color;
        let bins = calibration_bins(m.scores, labels);
        let pts: Vec<(f64, f64)> = bins.iter().map(|b| (b.predicted, b.observed)).collect();
        chart
            .draw_series(LineSeries::new(pts.clone(), color.stroke_width(2)))?
            .label(m.name.clone())
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 20, y)], color.stroke_width(2)));
        chart.draw_series(pts.iter().map(|&p| Circle::new(p, 4, color.filled())))?;
        if counts {
            let label = (FONT, 13).into_font().color(&BLACK);
            chart.draw_series(bins.iter().map(|b| {
                Text::new(
                    format!("{}", b.events),
                    (b.predicted + 0.012, b.observed - 0.015),
                    label.clone(),
                )
            }))?;
        }
    }
    legend(&mut chart, SeriesLabelPosition::UpperLeft)
}

/// A chart of the unit square with axis names and ticks every 0.1.
fn unit_chart<'a, 'b>(
    area: &'a Area<'b>,
    caption: &str,
    x_name: &str,
    y_name: &str,
) -> Result<Chart<'a, 'b>, Box<dyn std::error::Error>> {
    let mut builder = ChartBuilder::on(area);
    builder
        .margin(16)
        .margin_right(30)
        .x_label_area_size(48)
        .y_label_area_size(56);
    if !caption.is_empty() {
        builder.caption(caption, (FONT, 16));
    }
    let mut chart = builder.build_cartesian_2d(0f64..1f64, 0f64..1f64)?;
    chart
        .configure_mesh()
        .x_desc(x_name)
        .y_desc(y_name)
        .x_labels(11)
        .y_labels(11)
        .x_label_formatter(&|v| format!("{v:.1}"))
        .y_label_formatter(&|v| format!("{v:.1}"))
        .label_style((FONT, 13))
        .axis_desc_style((FONT, 15))
        .light_line_style(WHITE)
        .bold_line_style(RGBColor(225, 225, 225))
        .draw()?;
    Ok(chart)
}

fn legend<'a, 'b: 'a>(chart: &mut Chart<'a, 'b>, position: SeriesLabelPosition) -> Drawn {
    chart
        .configure_series_labels()
        .position(position)
        .background_style(WHITE.mix(0.9))
        .border_style(RGBColor(200, 200, 200))
        .label_font((FONT, 13))
        .draw()?;
    Ok(())
}

/// Draw a `size` image under `title` with `body`, as PNG.
fn render(size: (u32, u32), title: &str, body: impl FnOnce(&Area<'_>) -> Drawn) -> Result<Vec<u8>> {
    register_font()?;
    let (w, h) = size;
    let mut rgb = vec![0u8; (w * h * 3) as usize];
    {
        let root = BitMapBackend::with_buffer(&mut rgb, size).into_drawing_area();
        let run = || -> Drawn {
            root.fill(&WHITE)?;
            let area = root.titled(title, (FONT, 20))?;
            body(&area)?;
            root.present()?;
            Ok(())
        };
        run().map_err(|e| anyhow::anyhow!("cannot draw `{title}`: {e}"))?;
    }
    let mut out = Vec::new();
    {
        let mut encoder = png::Encoder::new(&mut out, w, h);
        encoder.set_color(png::ColorType::Rgb);
        encoder.set_depth(png::BitDepth::Eight);
        encoder
            .write_header()
            .and_then(|mut writer| writer.write_image_data(&rgb))
            .with_context(|| format!("cannot encode `{title}` as PNG"))?;
    }
    Ok(out)
}

/// Register DejaVu Sans as the plots' font, once per process.
fn register_font() -> Result<()> {
    static ONCE: Once = Once::new();
    let mut failed = false;
    ONCE.call_once(|| {
        failed = plotters::style::register_font(FONT, FontStyle::Normal, dejavu::sans::regular())
            .is_err();
    });
    anyhow::ensure!(!failed, "DejaVu Sans does not load as a font");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn curves_by_hand() {
        let scores = [0.9, 0.8, 0.7, 0.2];
        let labels = [true, false, true, false];
        assert_eq!(
            roc_points(&scores, &labels),
            vec![
                (0.0, 0.0),
                (0.0, 0.5),
                (0.5, 0.5),
                (0.5, 1.0),
                (1.0, 1.0),
                (1.0, 1.0)
            ]
        );
        let cal = calibration_bins(&scores, &labels);
        assert_eq!(cal.len(), 4, "four occupied bins: {cal:?}");
        assert_eq!(
            cal[0],
            Bin {
                predicted: 0.2,
                observed: 0.0,
                events: 1
            }
        );
        assert_eq!((cal[3].predicted, cal[3].observed), (0.9, 1.0));
    }

    /// The PNG decodes to an image of the plot's size that is not blank, and the same scores
    /// draw the same bytes (bundles are compared byte for byte).
    #[test]
    fn plots_decode_and_are_reproducible() {
        let scores: Vec<f64> = (0..200).map(|i| f64::from(i) / 200.0).collect();
        let labels: Vec<bool> = (0..200).map(|i| (i * 7) % 10 < i / 20).collect();
        for png in [
            roc_png(&scores, &labels, 0.75).unwrap(),
            calibration_png(&scores, &labels, 0.2).unwrap(),
        ] {
            let decoder = png::Decoder::new(std::io::Cursor::new(&png));
            let mut reader = decoder.read_info().unwrap();
            let mut buf = vec![0; reader.output_buffer_size()];
            let info = reader.next_frame(&mut buf).unwrap();
            assert_eq!((info.width, info.height), SIZE);
            let pixels = &buf[..info.buffer_size()];
            let dark = pixels
                .chunks(3)
                .filter(|p| p.iter().all(|&c| c < 80))
                .count();
            // Text and axes are dark; a plot without them would have almost none.
            assert!(dark > 2000, "{dark} dark pixels");
        }
        assert!(
            roc_png(&scores, &labels, 0.75).unwrap() == roc_png(&scores, &labels, 0.75).unwrap()
        );
    }

    /// The drift plot: the drifted column's bar is the only red on it.
    #[test]
    fn the_drift_plot_shows_the_drifted_columns_in_red() {
        let red = |drifted: bool| {
            let columns = [
                Drifted {
                    name: "score".into(),
                    psi: 0.02,
                    drifted: false,
                },
                Drifted {
                    name: "dep_delay".into(),
                    psi: 0.4,
                    drifted,
                },
            ];
            let shares = [0.1; 10];
            let window = [0.05, 0.05, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1, 0.2];
            let png = drift_png("drift", &columns, 0.1, &shares, &window).unwrap();
            let decoder = png::Decoder::new(std::io::Cursor::new(&png));
            let mut reader = decoder.read_info().unwrap();
            let mut buf = vec![0; reader.output_buffer_size()];
            let info = reader.next_frame(&mut buf).unwrap();
            assert_eq!((info.width, info.height), (SIZE.0 * 2, SIZE.1));
            buf[..info.buffer_size()]
                .chunks(3)
                .filter(|p| p == &[DRIFTED.0, DRIFTED.1, DRIFTED.2])
                .count()
        };
        assert!(red(true) > 1000, "{} red pixels", red(true));
        assert_eq!(red(false), 0);
    }
}
