//! Predictions as Parquet: one row per prediction, the columns of its JSON value with their
//! types (`event_time` a UTC timestamp in milliseconds), written in row groups of
//! [`ROW_GROUP`] rows with the `parquet` crate's column writers (snappy, dictionary-encoded
//! where values repeat: the model, fingerprint and topic columns cost next to nothing).

use std::fs::File;
use std::sync::Arc;

use anyhow::{Context, Result};
use parquet::basic::Compression;
use parquet::data_type::{
    BoolType, ByteArray, ByteArrayType, DataType, DoubleType, Int32Type, Int64Type,
};
use parquet::file::properties::WriterProperties;
use parquet::file::writer::{SerializedFileWriter, SerializedRowGroupWriter};

use crate::out_file::{Lineage, Prediction};

/// Rows buffered before a row group is written.
pub const ROW_GROUP: usize = 128 * 1024;

/// The schema, in Parquet's message notation; the column order is the order
/// [`ParquetPredictions::flush`] writes them in.
const SCHEMA: &str = "message prediction {
    required binary key (STRING);
    required int64 event_time (TIMESTAMP(MILLIS, true));
    required double score;
    required boolean decision;
    required binary model (STRING);
    required int64 version;
    required binary fingerprint (STRING);
    required binary topic (STRING);
    required int32 partition;
    required int64 offset;
}";

/// A Parquet file of predictions being written.
pub struct ParquetPredictions {
    writer: SerializedFileWriter<File>,
    lineage: [ByteArray; 2],
    version: i64,
    rows: Columns,
}

/// The buffered rows, column by column.
#[derive(Default)]
struct Columns {
    key: Vec<ByteArray>,
    event_time: Vec<i64>,
    score: Vec<f64>,
    decision: Vec<bool>,
    topic: Vec<ByteArray>,
    partition: Vec<i32>,
    offset: Vec<i64>,
}

impl ParquetPredictions {
    /// Start a file of predictions by the model `lineage` names.
    pub fn new(file: File, lineage: &Lineage) -> Result<Self> {
        let schema = parquet::schema::parser::parse_message_type(SCHEMA)?;
        let props = WriterProperties::builder()
            .set_compression(Compression::SNAPPY)
            .set_created_by(format!("kml scorer {}", env!("CARGO_PKG_VERSION")))
            .build();
        let writer = SerializedFileWriter::new(file, Arc::new(schema), Arc::new(props))?;
        Ok(Self {
            writer,
            lineage: [
                ByteArray::from(lineage.model.as_str()),
                ByteArray::from(lineage.fingerprint.as_str()),
            ],
            version: i64::try_from(lineage.version).context("a version past i64")?,
            rows: Columns::default(),
        })
    }

    /// Append one prediction; a full row group is written out.
    pub fn push(&mut self, p: &Prediction<'_>) -> Result<()> {
        let r = &mut self.rows;
        r.key.push(ByteArray::from(p.key.to_vec()));
        r.event_time.push(p.event_time);
        r.score.push(p.score.0);
        r.decision.push(p.score.1);
        // Consecutive rows of one topic share its bytes (a ByteArray is reference-counted).
        match r.topic.last() {
            Some(t) if t.data() == p.pos.topic.as_bytes() => {
                let same = t.clone();
                r.topic.push(same);
            }
            _ => r.topic.push(ByteArray::from(p.pos.topic)),
        }
        r.partition.push(p.pos.partition);
        r.offset.push(p.pos.offset);
        if r.key.len() >= ROW_GROUP {
            self.flush()?;
        }
        Ok(())
    }

    /// Write the buffered rows as one row group.
    fn flush(&mut self) -> Result<()> {
        let n = self.rows.key.len();
        if n == 0 {
            return Ok(());
        }
        let r = std::mem::take(&mut self.rows);
        let [model, fingerprint] = &self.lineage;
        let mut g = self.writer.next_row_group()?;
        column::<ByteArrayType>(&mut g, &r.key)?;
        column::<Int64Type>(&mut g, &r.event_time)?;
        column::<DoubleType>(&mut g, &r.score)?;
        column::<BoolType>(&mut g, &r.decision)?;
        column::<ByteArrayType>(&mut g, &vec![model.clone(); n])?;
        column::<Int64Type>(&mut g, &vec![self.version; n])?;
        column::<ByteArrayType>(&mut g, &vec![fingerprint.clone(); n])?;
        column::<ByteArrayType>(&mut g, &r.topic)?;
        column::<Int32Type>(&mut g, &r.partition)?;
        column::<Int64Type>(&mut g, &r.offset)?;
        g.close()?;
        Ok(())
    }

    /// Write what is buffered and the footer.
    pub fn finish(mut self) -> Result<()> {
        self.flush()?;
        self.writer.close()?;
        Ok(())
    }
}

/// Write the next column of the row group `g`: all `values`, none null.
fn column<T: DataType>(g: &mut SerializedRowGroupWriter<'_, File>, values: &[T::T]) -> Result<()> {
    let mut c = g
        .next_column()?
        .context("the schema has fewer columns than written")?;
    c.typed::<T>().write_batch(values, None, None)?;
    c.close()?;
    Ok(())
}
