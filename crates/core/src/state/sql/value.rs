//! The values that cross between the state code and either backend: parameters ([`Value`],
//! made with [`ToValue`]) and columns ([`FromColumn`]).

use postgres::types::{IsNull, ToSql, Type, to_sql_checked};
use rusqlite::types::{ToSqlOutput, ValueRef};

use super::{DbError, Result};
use crate::state::{DeliveryStatus, EventStatus};

/// A query parameter. Integers are 64-bit on both sides: the PostgreSQL schema uses `BIGINT`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) enum Value<'a> {
    Null,
    Int(i64),
    Real(f64),
    Text(&'a str),
    Bytes(&'a [u8]),
}

/// What can be a query parameter, borrowed for the query's length.
pub(crate) trait ToValue {
    /// The parameter.
    fn to_value(&self) -> Value<'_>;
}

impl<T: ToValue + ?Sized> ToValue for &T {
    fn to_value(&self) -> Value<'_> {
        (**self).to_value()
    }
}

impl<T: ToValue> ToValue for Option<T> {
    fn to_value(&self) -> Value<'_> {
        self.as_ref().map_or(Value::Null, ToValue::to_value)
    }
}

impl ToValue for Value<'_> {
    fn to_value(&self) -> Value<'_> {
        *self
    }
}

impl ToValue for i64 {
    fn to_value(&self) -> Value<'_> {
        Value::Int(*self)
    }
}

impl ToValue for i32 {
    fn to_value(&self) -> Value<'_> {
        Value::Int(i64::from(*self))
    }
}

impl ToValue for u32 {
    fn to_value(&self) -> Value<'_> {
        Value::Int(i64::from(*self))
    }
}

impl ToValue for bool {
    fn to_value(&self) -> Value<'_> {
        Value::Int(i64::from(*self))
    }
}

impl ToValue for f64 {
    fn to_value(&self) -> Value<'_> {
        Value::Real(*self)
    }
}

impl ToValue for str {
    fn to_value(&self) -> Value<'_> {
        Value::Text(self)
    }
}

impl ToValue for String {
    fn to_value(&self) -> Value<'_> {
        Value::Text(self)
    }
}

impl ToValue for [u8] {
    fn to_value(&self) -> Value<'_> {
        Value::Bytes(self)
    }
}

impl ToValue for Vec<u8> {
    fn to_value(&self) -> Value<'_> {
        Value::Bytes(self)
    }
}

impl ToValue for EventStatus {
    fn to_value(&self) -> Value<'_> {
        Value::Text(self.as_str())
    }
}

impl ToValue for DeliveryStatus {
    fn to_value(&self) -> Value<'_> {
        Value::Text(self.as_str())
    }
}

impl rusqlite::ToSql for Value<'_> {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        Ok(ToSqlOutput::Borrowed(match *self {
            Value::Null => ValueRef::Null,
            Value::Int(n) => ValueRef::Integer(n),
            Value::Real(x) => ValueRef::Real(x),
            Value::Text(s) => ValueRef::Text(s.as_bytes()),
            Value::Bytes(b) => ValueRef::Blob(b),
        }))
    }
}

pub(super) fn sqlite_params<'a>(params: &'a [Value<'a>]) -> impl rusqlite::Params + 'a {
    rusqlite::params_from_iter(params.iter())
}

/// PostgreSQL infers each parameter's type from the statement; a value is converted to it
/// when that keeps it exactly (an integer into `INT4` when it fits), and refused otherwise.
impl ToSql for Value<'_> {
    fn to_sql(
        &self,
        ty: &Type,
        out: &mut bytes::BytesMut,
    ) -> std::result::Result<IsNull, Box<dyn std::error::Error + Sync + Send>> {
        match *self {
            Value::Null => Ok(IsNull::Yes),
            Value::Int(n) => match *ty {
                Type::INT8 => n.to_sql(ty, out),
                Type::INT4 => i32::try_from(n)?.to_sql(ty, out),
                Type::INT2 => i16::try_from(n)?.to_sql(ty, out),
                Type::BOOL => (n != 0).to_sql(ty, out),
                Type::FLOAT8 => (n as f64).to_sql(ty, out),
                Type::TEXT | Type::VARCHAR => n.to_string().to_sql(ty, out),
                _ => Err(format!("an integer parameter where PostgreSQL expects {ty}").into()),
            },
            Value::Real(x) => match *ty {
                Type::FLOAT8 => x.to_sql(ty, out),
                Type::FLOAT4 => (x as f32).to_sql(ty, out),
                _ => Err(format!("a real parameter where PostgreSQL expects {ty}").into()),
            },
            Value::Text(s) => match *ty {
                Type::BYTEA => s.as_bytes().to_sql(ty, out),
                _ => s.to_sql(ty, out),
            },
            Value::Bytes(b) => match *ty {
                Type::BYTEA => b.to_sql(ty, out),
                _ => Err(format!("a byte parameter where PostgreSQL expects {ty}").into()),
            },
        }
    }

    fn accepts(_: &Type) -> bool {
        // Checked per value in `to_sql`, which names the type it could not meet.
        true
    }

    to_sql_checked!();
}

/// What a column can be read as.
pub(crate) trait FromColumn: Sized {
    /// From SQLite's value of column `idx`.
    fn from_sqlite(value: ValueRef<'_>, idx: usize) -> Result<Self>;
    /// From column `idx` of a PostgreSQL row.
    fn from_postgres(row: &postgres::Row, idx: usize) -> Result<Self>;
}

fn pg_type(row: &postgres::Row, idx: usize) -> Result<&Type> {
    row.columns()
        .get(idx)
        .map(postgres::Column::type_)
        .ok_or_else(|| DbError::column(idx, "no such column"))
}

impl FromColumn for i64 {
    fn from_sqlite(value: ValueRef<'_>, idx: usize) -> Result<Self> {
        match value {
            ValueRef::Integer(n) => Ok(n),
            other => Err(DbError::column(
                idx,
                format!("expected an integer, found {}", other.data_type()),
            )),
        }
    }

    fn from_postgres(row: &postgres::Row, idx: usize) -> Result<Self> {
        Option::<i64>::from_postgres(row, idx)?
            .ok_or_else(|| DbError::column(idx, "expected an integer, found NULL"))
    }
}

impl FromColumn for Option<i64> {
    fn from_sqlite(value: ValueRef<'_>, idx: usize) -> Result<Self> {
        match value {
            ValueRef::Null => Ok(None),
            other => i64::from_sqlite(other, idx).map(Some),
        }
    }

    fn from_postgres(row: &postgres::Row, idx: usize) -> Result<Self> {
        let ty = pg_type(row, idx)?;
        Ok(match *ty {
            Type::INT8 => row.try_get::<_, Option<i64>>(idx)?,
            Type::INT4 => row.try_get::<_, Option<i32>>(idx)?.map(i64::from),
            Type::INT2 => row.try_get::<_, Option<i16>>(idx)?.map(i64::from),
            Type::BOOL => row.try_get::<_, Option<bool>>(idx)?.map(i64::from),
            _ => {
                return Err(DbError::column(
                    idx,
                    format!("expected an integer, found {ty} (cast it to BIGINT in the query)"),
                ));
            }
        })
    }
}

macro_rules! unsigned_column {
    ($unsigned:ty) => {
        impl FromColumn for $unsigned {
            fn from_sqlite(value: ValueRef<'_>, idx: usize) -> Result<Self> {
                let n = i64::from_sqlite(value, idx)?;
                <$unsigned>::try_from(n).map_err(|_| {
                    DbError::column(idx, format!("{n} is not a {}", stringify!($unsigned)))
                })
            }

            fn from_postgres(row: &postgres::Row, idx: usize) -> Result<Self> {
                let n = i64::from_postgres(row, idx)?;
                <$unsigned>::try_from(n).map_err(|_| {
                    DbError::column(idx, format!("{n} is not a {}", stringify!($unsigned)))
                })
            }
        }
    };
}

unsigned_column!(u64);
unsigned_column!(u32);

impl FromColumn for bool {
    fn from_sqlite(value: ValueRef<'_>, idx: usize) -> Result<Self> {
        i64::from_sqlite(value, idx).map(|n| n != 0)
    }

    fn from_postgres(row: &postgres::Row, idx: usize) -> Result<Self> {
        i64::from_postgres(row, idx).map(|n| n != 0)
    }
}

impl FromColumn for f64 {
    fn from_sqlite(value: ValueRef<'_>, idx: usize) -> Result<Self> {
        match value {
            ValueRef::Real(x) => Ok(x),
            ValueRef::Integer(n) => Ok(n as f64),
            other => Err(DbError::column(
                idx,
                format!("expected a number, found {}", other.data_type()),
            )),
        }
    }

    fn from_postgres(row: &postgres::Row, idx: usize) -> Result<Self> {
        match *pg_type(row, idx)? {
            Type::FLOAT8 => Ok(row.try_get(idx)?),
            Type::FLOAT4 => Ok(f64::from(row.try_get::<_, f32>(idx)?)),
            _ => i64::from_postgres(row, idx).map(|n| n as f64),
        }
    }
}

impl FromColumn for Option<String> {
    fn from_sqlite(value: ValueRef<'_>, idx: usize) -> Result<Self> {
        match value {
            ValueRef::Null => Ok(None),
            ValueRef::Text(t) => std::str::from_utf8(t)
                .map(|s| Some(s.to_owned()))
                .map_err(|e| DbError::column(idx, e)),
            other => Err(DbError::column(
                idx,
                format!("expected text, found {}", other.data_type()),
            )),
        }
    }

    fn from_postgres(row: &postgres::Row, idx: usize) -> Result<Self> {
        Ok(row.try_get(idx)?)
    }
}

impl FromColumn for String {
    fn from_sqlite(value: ValueRef<'_>, idx: usize) -> Result<Self> {
        Option::<String>::from_sqlite(value, idx)?
            .ok_or_else(|| DbError::column(idx, "expected text, found NULL"))
    }

    fn from_postgres(row: &postgres::Row, idx: usize) -> Result<Self> {
        Option::<String>::from_postgres(row, idx)?
            .ok_or_else(|| DbError::column(idx, "expected text, found NULL"))
    }
}

impl FromColumn for Option<Vec<u8>> {
    fn from_sqlite(value: ValueRef<'_>, idx: usize) -> Result<Self> {
        match value {
            ValueRef::Null => Ok(None),
            ValueRef::Blob(b) | ValueRef::Text(b) => Ok(Some(b.to_vec())),
            other => Err(DbError::column(
                idx,
                format!("expected bytes, found {}", other.data_type()),
            )),
        }
    }

    fn from_postgres(row: &postgres::Row, idx: usize) -> Result<Self> {
        Ok(match *pg_type(row, idx)? {
            Type::BYTEA => row.try_get::<_, Option<Vec<u8>>>(idx)?,
            _ => row
                .try_get::<_, Option<String>>(idx)?
                .map(String::into_bytes),
        })
    }
}

impl FromColumn for Vec<u8> {
    fn from_sqlite(value: ValueRef<'_>, idx: usize) -> Result<Self> {
        Option::<Vec<u8>>::from_sqlite(value, idx)?
            .ok_or_else(|| DbError::column(idx, "expected bytes, found NULL"))
    }

    fn from_postgres(row: &postgres::Row, idx: usize) -> Result<Self> {
        Option::<Vec<u8>>::from_postgres(row, idx)?
            .ok_or_else(|| DbError::column(idx, "expected bytes, found NULL"))
    }
}

macro_rules! status_column {
    ($status:ty, $unknown:expr) => {
        impl FromColumn for $status {
            fn from_sqlite(value: ValueRef<'_>, idx: usize) -> Result<Self> {
                let text = String::from_sqlite(value, idx)?;
                <$status>::parse(&text).map_or_else(|| $unknown(idx, &text), Ok)
            }

            fn from_postgres(row: &postgres::Row, idx: usize) -> Result<Self> {
                let text = String::from_postgres(row, idx)?;
                <$status>::parse(&text).map_or_else(|| $unknown(idx, &text), Ok)
            }
        }
    };
}

// An inbox status this build does not know is work not finished: the event is looked at
// again rather than forgotten (as `status` reads it for SQLite).
status_column!(EventStatus, |_, _: &str| Ok(EventStatus::Pending));
status_column!(DeliveryStatus, |idx, text: &str| Err(DbError::column(
    idx,
    format!("unknown delivery status {text:?}")
)));
