//! The ROC curve and the calibration plot of the validation split, drawn as PNG images for the
//! bundle. Plain raster drawing: axes, grid, the diagonal of a useless (ROC) or perfectly
//! calibrated (calibration) model, and the model's curve; the numbers are in the manifest.

use std::io::Write;

const SIZE: usize = 400;
const MARGIN: usize = 30;
const WHITE: [u8; 3] = [255, 255, 255];
const GRID: [u8; 3] = [225, 225, 225];
const AXIS: [u8; 3] = [60, 60, 60];
const REFERENCE: [u8; 3] = [170, 170, 170];
const CURVE: [u8; 3] = [31, 119, 180];

struct Canvas {
    px: Vec<[u8; 3]>,
}

impl Canvas {
    /// A square plot of the unit square with a grid every 0.1.
    fn unit_square() -> Self {
        let mut c = Canvas {
            px: vec![WHITE; SIZE * SIZE],
        };
        for k in 0..=10 {
            let v = k as f64 / 10.0;
            let color = if k == 0 { AXIS } else { GRID };
            c.line((v, 0.0), (v, 1.0), color);
            c.line((0.0, v), (1.0, v), color);
        }
        c.line((0.0, 0.0), (1.0, 1.0), REFERENCE);
        c
    }

    fn to_px(p: (f64, f64)) -> (i64, i64) {
        let span = (SIZE - 2 * MARGIN) as f64;
        let x = MARGIN as f64 + p.0.clamp(0.0, 1.0) * span;
        let y = (SIZE - MARGIN) as f64 - p.1.clamp(0.0, 1.0) * span;
        (x.round() as i64, y.round() as i64)
    }

    fn set(&mut self, x: i64, y: i64, color: [u8; 3]) {
        if (0..SIZE as i64).contains(&x) && (0..SIZE as i64).contains(&y) {
            self.px[y as usize * SIZE + x as usize] = color;
        }
    }

    /// A line between two points of the unit square (Bresenham), two pixels wide for curves.
    fn line(&mut self, a: (f64, f64), b: (f64, f64), color: [u8; 3]) {
        let ((mut x0, mut y0), (x1, y1)) = (Self::to_px(a), Self::to_px(b));
        let (dx, dy) = ((x1 - x0).abs(), -(y1 - y0).abs());
        let (sx, sy) = (if x0 < x1 { 1 } else { -1 }, if y0 < y1 { 1 } else { -1 });
        let mut err = dx + dy;
        loop {
            self.set(x0, y0, color);
            if color == CURVE {
                self.set(x0 + 1, y0, color);
                self.set(x0, y0 + 1, color);
            }
            if x0 == x1 && y0 == y1 {
                break;
            }
            let e2 = 2 * err;
            if e2 >= dy {
                err += dy;
                x0 += sx;
            }
            if e2 <= dx {
                err += dx;
                y0 += sy;
            }
        }
    }

    fn polyline(&mut self, pts: &[(f64, f64)]) {
        for w in pts.windows(2) {
            self.line(w[0], w[1], CURVE);
        }
    }

    fn dot(&mut self, p: (f64, f64)) {
        let (x, y) = Self::to_px(p);
        for dx in -3..=3 {
            for dy in -3..=3 {
                self.set(x + dx, y + dy, CURVE);
            }
        }
    }

    fn png(&self) -> Vec<u8> {
        let mut raw = Vec::with_capacity(SIZE * (SIZE * 3 + 1));
        for row in self.px.chunks(SIZE) {
            raw.push(0); // filter: none
            for p in row {
                raw.extend_from_slice(p);
            }
        }
        let mut z = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
        // Writing into a Vec cannot fail.
        let _ = z.write_all(&raw);
        let idat = z.finish().unwrap_or_default();
        let mut out = b"\x89PNG\r\n\x1a\n".to_vec();
        let mut ihdr = Vec::new();
        ihdr.extend_from_slice(&(SIZE as u32).to_be_bytes());
        ihdr.extend_from_slice(&(SIZE as u32).to_be_bytes());
        ihdr.extend_from_slice(&[8, 2, 0, 0, 0]); // 8-bit RGB, deflate, no filter, no interlace
        chunk(&mut out, b"IHDR", &ihdr);
        chunk(&mut out, b"IDAT", &idat);
        chunk(&mut out, b"IEND", &[]);
        out
    }
}

fn chunk(out: &mut Vec<u8>, kind: &[u8; 4], data: &[u8]) {
    out.extend_from_slice(&(data.len() as u32).to_be_bytes());
    let start = out.len();
    out.extend_from_slice(kind);
    out.extend_from_slice(data);
    let crc = crc32fast::hash(&out[start..]);
    out.extend_from_slice(&crc.to_be_bytes());
}

/// `(false positive rate, true positive rate)` points of the ROC curve, at most ~500.
pub fn roc_points(scores: &[f64], labels: &[bool]) -> Vec<(f64, f64)> {
    let mut order: Vec<usize> = (0..scores.len()).collect();
    order.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]));
    let pos = labels.iter().filter(|&&y| y).count().max(1) as f64;
    let neg = (labels.len() as f64 - pos).max(1.0);
    let step = (order.len() / 500).max(1);
    let (mut tp, mut fp) = (0.0, 0.0);
    let mut pts = vec![(0.0, 0.0)];
    for (k, &i) in order.iter().enumerate() {
        if labels[i] {
            tp += 1.0;
        } else {
            fp += 1.0;
        }
        let tie = order.get(k + 1).is_some_and(|&j| scores[j] == scores[i]);
        if !tie && (k % step == 0 || k + 1 == order.len()) {
            pts.push((fp / neg, tp / pos));
        }
    }
    pts.push((1.0, 1.0));
    pts
}

/// `(mean predicted probability, observed positive rate)` of ten equal-width bins (empty bins
/// left out).
pub fn calibration_points(scores: &[f64], labels: &[bool]) -> Vec<(f64, f64)> {
    let mut bins = [(0.0, 0.0, 0u64); 10];
    for (&s, &y) in scores.iter().zip(labels) {
        let b = ((s * 10.0) as usize).min(9);
        bins[b].0 += s;
        bins[b].1 += f64::from(u8::from(y));
        bins[b].2 += 1;
    }
    bins.iter()
        .filter(|b| b.2 > 0)
        .map(|b| (b.0 / b.2 as f64, b.1 / b.2 as f64))
        .collect()
}

/// The ROC curve as a PNG.
pub fn roc_png(scores: &[f64], labels: &[bool]) -> Vec<u8> {
    let mut c = Canvas::unit_square();
    c.polyline(&roc_points(scores, labels));
    c.png()
}

/// The calibration plot as a PNG.
pub fn calibration_png(scores: &[f64], labels: &[bool]) -> Vec<u8> {
    let mut c = Canvas::unit_square();
    let pts = calibration_points(scores, labels);
    c.polyline(&pts);
    for p in &pts {
        c.dot(*p);
    }
    c.png()
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
        let cal = calibration_points(&scores, &labels);
        assert_eq!(cal.len(), 4, "four occupied bins: {cal:?}");
        assert_eq!(cal[0], (0.2, 0.0));
        assert_eq!(cal[3], (0.9, 1.0));
        let png = roc_png(&scores, &labels);
        assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
        assert_eq!(&png[12..16], b"IHDR");
        assert_eq!(&png[png.len() - 8..png.len() - 4], b"IEND");
    }
}
