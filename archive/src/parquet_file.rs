//! The archive's file format: Parquet, one row per ledger entry, the columns of
//! `ledger_entry_details`. Money and quantities are decimal strings exactly as the ledger holds
//! them (Parquet's DECIMAL needs one scale per column, and a quantity's scale is the meter's);
//! times are microseconds since the epoch, UTC. Snappy-compressed row groups. Pure: bytes in,
//! bytes out.

use std::sync::Arc;

use bytes::Bytes;
use chrono::{DateTime, Utc};
use parquet::basic::Compression;
use parquet::data_type::{ByteArray, ByteArrayType, Int32Type, Int64Type};
use parquet::file::properties::WriterProperties;
use parquet::file::reader::{FileReader, SerializedFileReader};
use parquet::file::writer::SerializedFileWriter;
use parquet::record::{Field, RowAccessor};
use parquet::schema::parser::parse_message_type;
use parquet::schema::types::Type;
use rust_decimal::Decimal;

use ledger::archive::ArchiveRow;

/// The schema every archive file has, column for column as [`ArchiveRow`].
pub const SCHEMA: &str = "message ledger_entry {
    required binary tenant_id (STRING);
    required binary meter (STRING);
    required int64 window_start (TIMESTAMP(MICROS,true));
    required int64 window_end (TIMESTAMP(MICROS,true));
    required int32 revision;
    required binary kind (STRING);
    required binary quantity (STRING);
    required binary unit (STRING);
    required int64 price_version;
    required binary rate (STRING);
    required binary price_unit (STRING);
    required binary units_per_price_unit (STRING);
    required binary amount (STRING);
    required binary currency (STRING);
    required binary source (STRING);
    optional binary reason (STRING);
}";

/// Rows per row group: a reader holds one group's column chunks at a time.
const ROW_GROUP_ROWS: usize = 65_536;

#[derive(Debug, thiserror::Error)]
pub enum FormatError {
    #[error("parquet: {0}")]
    Parquet(#[from] parquet::errors::ParquetError),
    #[error("row {row}: {message}")]
    Row { row: u64, message: String },
}

fn schema() -> Arc<Type> {
    Arc::new(parse_message_type(SCHEMA).expect("the archive schema parses"))
}

/// Writes rows into one in-memory Parquet file, a row group at a time.
pub struct FileEncoder {
    writer: SerializedFileWriter<Vec<u8>>,
    pending: Vec<ArchiveRow>,
    rows: u64,
}

impl FileEncoder {
    pub fn new() -> Result<Self, FormatError> {
        let properties = WriterProperties::builder()
            .set_compression(Compression::SNAPPY)
            // A fixed writer name: the same rows make the same bytes whichever build wrote
            // them, so an export run again after a crash uploads identical files.
            .set_created_by("budgetd archive".to_owned())
            .build();
        Ok(FileEncoder {
            writer: SerializedFileWriter::new(Vec::new(), schema(), Arc::new(properties))?,
            pending: Vec::with_capacity(ROW_GROUP_ROWS),
            rows: 0,
        })
    }

    pub fn rows(&self) -> u64 {
        self.rows + self.pending.len() as u64
    }

    pub fn push(&mut self, row: ArchiveRow) -> Result<(), FormatError> {
        self.pending.push(row);
        if self.pending.len() == ROW_GROUP_ROWS {
            self.flush()?;
        }
        Ok(())
    }

    fn flush(&mut self) -> Result<(), FormatError> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let rows = std::mem::take(&mut self.pending);
        let mut group = self.writer.next_row_group()?;
        let text = |f: &dyn Fn(&ArchiveRow) -> String| -> Vec<ByteArray> {
            rows.iter()
                .map(|r| ByteArray::from(f(r).into_bytes()))
                .collect()
        };
        let micros = |f: &dyn Fn(&ArchiveRow) -> DateTime<Utc>| -> Vec<i64> {
            rows.iter().map(|r| f(r).timestamp_micros()).collect()
        };
        let mut column = 0;
        while let Some(mut writer) = group.next_column()? {
            match column {
                0 => write_text(&mut writer, &text(&|r| r.tenant_id.clone()))?,
                1 => write_text(&mut writer, &text(&|r| r.meter.clone()))?,
                2 => write_i64(&mut writer, &micros(&|r| r.window_start))?,
                3 => write_i64(&mut writer, &micros(&|r| r.window_end))?,
                4 => {
                    let values: Vec<i32> = rows.iter().map(|r| r.revision).collect();
                    writer
                        .typed::<Int32Type>()
                        .write_batch(&values, None, None)?;
                }
                5 => write_text(&mut writer, &text(&|r| r.kind.clone()))?,
                6 => write_text(&mut writer, &text(&|r| r.quantity.to_string()))?,
                7 => write_text(&mut writer, &text(&|r| r.unit.clone()))?,
                8 => {
                    let values: Vec<i64> = rows.iter().map(|r| r.price_version).collect();
                    write_i64(&mut writer, &values)?;
                }
                9 => write_text(&mut writer, &text(&|r| r.rate.to_string()))?,
                10 => write_text(&mut writer, &text(&|r| r.price_unit.clone()))?,
                11 => write_text(&mut writer, &text(&|r| r.units_per_price_unit.to_string()))?,
                12 => write_text(&mut writer, &text(&|r| r.amount.to_string()))?,
                13 => write_text(&mut writer, &text(&|r| r.currency.clone()))?,
                14 => write_text(&mut writer, &text(&|r| r.source.clone()))?,
                15 => {
                    let present: Vec<ByteArray> = rows
                        .iter()
                        .filter_map(|r| r.reason.as_ref())
                        .map(|reason| ByteArray::from(reason.as_str()))
                        .collect();
                    let levels: Vec<i16> =
                        rows.iter().map(|r| i16::from(r.reason.is_some())).collect();
                    writer
                        .typed::<ByteArrayType>()
                        .write_batch(&present, Some(&levels), None)?;
                }
                _ => unreachable!("the schema has 16 columns"),
            }
            writer.close()?;
            column += 1;
        }
        group.close()?;
        self.rows += rows.len() as u64;
        Ok(())
    }

    /// The complete file.
    pub fn finish(mut self) -> Result<Bytes, FormatError> {
        self.flush()?;
        Ok(Bytes::from(self.writer.into_inner()?))
    }
}

fn write_text(
    writer: &mut parquet::file::writer::SerializedColumnWriter<'_>,
    values: &[ByteArray],
) -> Result<(), FormatError> {
    writer
        .typed::<ByteArrayType>()
        .write_batch(values, None, None)?;
    Ok(())
}

fn write_i64(
    writer: &mut parquet::file::writer::SerializedColumnWriter<'_>,
    values: &[i64],
) -> Result<(), FormatError> {
    writer
        .typed::<Int64Type>()
        .write_batch(values, None, None)?;
    Ok(())
}

/// Calls `each` with every row of a file, in order. A file whose schema is not the archive's,
/// or a value that does not parse, is an error naming the row.
pub fn decode(
    file: Bytes,
    mut each: impl FnMut(ArchiveRow) -> Result<(), FormatError>,
) -> Result<u64, FormatError> {
    let reader = SerializedFileReader::new(file)?;
    let found = reader.metadata().file_metadata().schema();
    if found != schema().as_ref() {
        return Err(FormatError::Row {
            row: 0,
            message: "the file's schema is not the ledger archive's".to_owned(),
        });
    }
    let mut count = 0u64;
    for row in reader.get_row_iter(None)? {
        let row = row?;
        let bad = |message: String| FormatError::Row {
            row: count,
            message,
        };
        let decimal = |i: usize, name: &str| -> Result<Decimal, FormatError> {
            let text = row.get_string(i)?;
            ledger::money::parse_decimal(name, text).map_err(|e| bad(e.to_string()))
        };
        let time = |i: usize, name: &str| -> Result<DateTime<Utc>, FormatError> {
            let micros = row.get_timestamp_micros(i)?;
            DateTime::from_timestamp_micros(micros)
                .ok_or_else(|| bad(format!("{name}: {micros} µs is out of range")))
        };
        each(ArchiveRow {
            tenant_id: row.get_string(0)?.clone(),
            meter: row.get_string(1)?.clone(),
            window_start: time(2, "window_start")?,
            window_end: time(3, "window_end")?,
            revision: row.get_int(4)?,
            kind: row.get_string(5)?.clone(),
            quantity: decimal(6, "quantity")?,
            unit: row.get_string(7)?.clone(),
            price_version: row.get_long(8)?,
            rate: decimal(9, "rate")?,
            price_unit: row.get_string(10)?.clone(),
            units_per_price_unit: decimal(11, "units_per_price_unit")?,
            amount: decimal(12, "amount")?,
            currency: row.get_string(13)?.clone(),
            source: row.get_string(14)?.clone(),
            reason: match row.get_column_iter().nth(15).map(|(_, field)| field) {
                Some(Field::Null) => None,
                Some(Field::Str(reason)) => Some(reason.clone()),
                _ => return Err(bad("reason is not text".to_owned())),
            },
        })?;
        count += 1;
    }
    Ok(count)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(i: i64) -> ArchiveRow {
        let start = DateTime::from_timestamp(1_735_689_600 + i * 300, 0).unwrap();
        ArchiveRow {
            tenant_id: format!("tenant-{}", i % 7),
            meter: "cpu".into(),
            window_start: start,
            window_end: start + chrono::Duration::seconds(300),
            revision: 1 + (i % 2) as i32,
            kind: if i % 3 == 0 { "reversal" } else { "usage" }.into(),
            quantity: Decimal::new(-i * 1_000_001, 6),
            unit: "core_seconds".into(),
            price_version: 3,
            rate: Decimal::new(45_000_000_000_001, 12),
            price_unit: "core_hour".into(),
            units_per_price_unit: Decimal::from(3600),
            amount: Decimal::new(-i * 123_456_789_012_345, 12),
            currency: "EUR".into(),
            source: "collector".into(),
            reason: (i % 5 == 0).then(|| format!("recollected {i}")),
        }
    }

    #[test]
    fn rows_round_trip_exactly_over_several_row_groups() {
        let rows: Vec<ArchiveRow> = (0..(ROW_GROUP_ROWS as i64 + 10)).map(row).collect();
        let mut encoder = FileEncoder::new().unwrap();
        for r in rows.clone() {
            encoder.push(r).unwrap();
        }
        assert_eq!(encoder.rows(), rows.len() as u64);
        let file = encoder.finish().unwrap();
        let mut back = Vec::new();
        let n = decode(file.clone(), |r| {
            back.push(r);
            Ok(())
        })
        .unwrap();
        assert_eq!(n, rows.len() as u64);
        assert_eq!(back, rows);
        // Same rows, same bytes: a rerun uploads an identical file.
        let mut again = FileEncoder::new().unwrap();
        for r in rows {
            again.push(r).unwrap();
        }
        assert_eq!(again.finish().unwrap(), file);
    }

    #[test]
    fn a_file_of_another_schema_is_refused() {
        let other = Arc::new(parse_message_type("message x { required int32 a; }").unwrap());
        let mut writer = SerializedFileWriter::new(
            Vec::new(),
            other,
            Arc::new(WriterProperties::builder().build()),
        )
        .unwrap();
        let mut group = writer.next_row_group().unwrap();
        let mut column = group.next_column().unwrap().unwrap();
        column
            .typed::<Int32Type>()
            .write_batch(&[1], None, None)
            .unwrap();
        column.close().unwrap();
        group.close().unwrap();
        let file = Bytes::from(writer.into_inner().unwrap());
        let e = decode(file, |_| Ok(())).unwrap_err();
        assert!(e.to_string().contains("not the ledger archive's"), "{e}");
    }
}
