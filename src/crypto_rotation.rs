//! `ENCRYPTION_KEY` rotation: re-sealing every encrypted column under the primary key.
//!
//! Every column that holds a value sealed by [`Cipher`] is listed once in [`ENCRYPTED_COLUMNS`]
//! with the associated data it is bound to; a new encrypted column needs one line there (and the
//! rotation tests then cover it too). `waba-migrator reencrypt` walks each column in batches
//! (keyset by id, one short transaction per batch), opens each value with the primary key or
//! `ENCRYPTION_KEY_OLD`, and replaces values that only the old key opens with a fresh seal under
//! the primary key. The replacement is guarded by the old ciphertext (`WHERE col = old`), so a
//! write the service makes meanwhile wins, and running it again is harmless: values already
//! under the primary key are left alone. Values that neither key opens are reported by id.

use std::fmt;

use secrecy::ExposeSecret;
use sqlx::PgPool;
use uuid::Uuid;

use crate::crypto::{Cipher, KeyUsed, aad};
use crate::db;

/// One encrypted column: its table (keyed by a uuid `id`), the column, and the associated data
/// its values are sealed with, from the row id.
#[derive(Debug, Clone, Copy)]
pub struct EncryptedColumn {
    pub table: &'static str,
    pub column: &'static str,
    pub aad: fn(Uuid) -> String,
}

impl EncryptedColumn {
    pub const fn new(table: &'static str, column: &'static str, aad: fn(Uuid) -> String) -> Self {
        Self { table, column, aad }
    }

    /// `table.column`.
    pub fn name(&self) -> String {
        format!("{}.{}", self.table, self.column)
    }
}

/// Every column sealed under `ENCRYPTION_KEY` (nullable columns included: NULLs are skipped).
pub static ENCRYPTED_COLUMNS: &[EncryptedColumn] = &[
    EncryptedColumn::new("partners", "d360_api_key_enc", aad::partner_key),
    EncryptedColumn::new("partners", "webhook_secret_enc", aad::webhook_secret),
    EncryptedColumn::new(
        "partners",
        "webhook_secret_previous_enc",
        aad::webhook_secret,
    ),
    EncryptedColumn::new("partners", "webhook_secret_older_enc", aad::webhook_secret),
    EncryptedColumn::new("migrations", "pin_enc", aad::pin),
    EncryptedColumn::new("migrations", "otp_code_enc", aad::otp_code),
    EncryptedColumn::new("migrations", "api_key_enc", aad::api_key),
    EncryptedColumn::new("fingerprint_keys", "key_enc", aad::fingerprint_key),
];

/// Replaces the kept fingerprint key with a new random one, sealed under the primary key (after
/// a leak of an `ENCRYPTION_KEY`, whose holder could otherwise still derive client-page tokens).
pub async fn replace_fingerprint_key(pool: &PgPool, cipher: &Cipher) -> Result<(), db::Error> {
    let fresh = Cipher::generate_key();
    let sealed = cipher.seal(
        fresh.expose_secret(),
        &aad::fingerprint_key(db::fingerprint_keys::KEPT),
    );
    db::fingerprint_keys::replace(pool, &sealed).await
}

/// `cipher` with the fingerprint key kept in the database (see
/// [`Cipher::with_fingerprint_key`]), keeping one first if there is none: the key its
/// fingerprints have been made with so far. Run at startup, after [`first_unopenable`].
pub async fn with_kept_fingerprint_key(pool: &PgPool, cipher: Cipher) -> anyhow::Result<Cipher> {
    use db::fingerprint_keys::{KEPT, get, insert_if_absent};
    let aad = aad::fingerprint_key(KEPT);
    if get(pool).await?.is_none() {
        let sealed = cipher.seal(cipher.fingerprint_key_to_keep().expose_secret(), &aad);
        insert_if_absent(pool, &sealed).await?;
    }
    let sealed = get(pool)
        .await?
        .ok_or_else(|| anyhow::anyhow!("the kept fingerprint key vanished"))?;
    let kept = cipher
        .open(&sealed, &aad)
        .map_err(|_| anyhow::anyhow!("ENCRYPTION_KEY does not open fingerprint_keys.key_enc"))?;
    Ok(cipher.with_fingerprint_key(&kept)?)
}

/// What happened to one column.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ColumnReport {
    /// `table.column`.
    pub column: String,
    /// Already under the primary key: left alone.
    pub current: u64,
    /// Opened with the old key and re-sealed under the primary key.
    pub resealed: u64,
    /// Opened with the old key, but the service changed the value before it could be replaced
    /// (the service's value wins; it is sealed under the primary key already).
    pub changed_meanwhile: u64,
    /// Ids of rows whose value neither key opens.
    pub undecryptable: Vec<Uuid>,
}

/// The outcome of a run, one entry per column of [`ENCRYPTED_COLUMNS`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Report {
    pub columns: Vec<ColumnReport>,
}

impl Report {
    /// The report of `table.column`.
    pub fn column(&self, name: &str) -> Option<&ColumnReport> {
        self.columns.iter().find(|c| c.column == name)
    }

    /// How many values neither key opens, over all columns.
    pub fn undecryptable(&self) -> usize {
        self.columns.iter().map(|c| c.undecryptable.len()).sum()
    }

    /// How many values were re-sealed, over all columns.
    pub fn resealed(&self) -> u64 {
        self.columns.iter().map(|c| c.resealed).sum()
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let w = self
            .columns
            .iter()
            .map(|c| c.column.len())
            .fold("column".len(), usize::max);
        writeln!(
            f,
            "{:<w$} {:>9} {:>9} {:>17} {:>13}",
            "column", "current", "resealed", "changed meanwhile", "undecryptable"
        )?;
        for c in &self.columns {
            writeln!(
                f,
                "{:<w$} {:>9} {:>9} {:>17} {:>13}",
                c.column,
                c.current,
                c.resealed,
                c.changed_meanwhile,
                c.undecryptable.len()
            )?;
        }
        for c in self.columns.iter().filter(|c| !c.undecryptable.is_empty()) {
            let ids: Vec<String> = c.undecryptable.iter().map(Uuid::to_string).collect();
            writeln!(
                f,
                "{}: no configured key opens the value of id {}",
                c.column,
                ids.join(", ")
            )?;
        }
        Ok(())
    }
}

/// The first column of [`ENCRYPTED_COLUMNS`] whose oldest or newest value no key of `cipher`
/// opens, if any: a service started with the wrong key (say, the old one after a rotation, or
/// the new one alone after an interrupted `reencrypt`, which re-seals in id order) would
/// otherwise run and fail every read of a secret.
pub async fn first_unopenable(pool: &PgPool, cipher: &Cipher) -> Result<Option<String>, db::Error> {
    for col in ENCRYPTED_COLUMNS {
        let oldest = db::encrypted::batch(pool, col.table, col.column, None, 1).await?;
        let newest = db::encrypted::newest(pool, col.table, col.column).await?;
        if oldest
            .iter()
            .chain(newest.iter())
            .any(|(id, sealed)| cipher.open_reporting_key(sealed, &(col.aad)(*id)).is_err())
        {
            return Ok(Some(col.name()));
        }
    }
    Ok(None)
}

/// Re-seals every value of [`ENCRYPTED_COLUMNS`] that only the old key of `cipher` opens, in
/// transactions of at most `batch_size` rows. Without an old key it only checks the values.
pub async fn reencrypt(
    pool: &PgPool,
    cipher: &Cipher,
    batch_size: u32,
) -> Result<Report, db::Error> {
    reencrypt_columns(pool, cipher, ENCRYPTED_COLUMNS, batch_size).await
}

/// [`reencrypt`] over the given columns.
pub async fn reencrypt_columns(
    pool: &PgPool,
    cipher: &Cipher,
    columns: &[EncryptedColumn],
    batch_size: u32,
) -> Result<Report, db::Error> {
    let mut report = Report::default();
    for column in columns {
        let r = reencrypt_column(pool, cipher, column, batch_size).await?;
        tracing::info!(
            column = %r.column,
            current = r.current,
            resealed = r.resealed,
            changed_meanwhile = r.changed_meanwhile,
            undecryptable = r.undecryptable.len(),
            "column re-encrypted"
        );
        report.columns.push(r);
    }
    Ok(report)
}

async fn reencrypt_column(
    pool: &PgPool,
    cipher: &Cipher,
    col: &EncryptedColumn,
    batch_size: u32,
) -> Result<ColumnReport, db::Error> {
    let limit = i64::from(batch_size.max(1));
    let mut report = ColumnReport {
        column: col.name(),
        ..ColumnReport::default()
    };
    let mut after = None;
    loop {
        let rows = db::encrypted::batch(pool, col.table, col.column, after, limit).await?;
        let Some((last, _)) = rows.last() else {
            break;
        };
        after = Some(*last);
        // Seal first, so the transaction holds its row locks only for the writes.
        let mut replacements = Vec::new();
        for (id, sealed) in &rows {
            let aad = (col.aad)(*id);
            match cipher.open_reporting_key(sealed, &aad) {
                Ok((_, KeyUsed::Primary)) => report.current += 1,
                Ok((plain, KeyUsed::Old)) => {
                    replacements.push((*id, sealed, cipher.seal(plain.expose_secret(), &aad)));
                }
                Err(_) => {
                    tracing::warn!(column = %report.column, %id, "no configured key opens this value");
                    report.undecryptable.push(*id);
                }
            }
        }
        if !replacements.is_empty() {
            let mut tx = pool.begin().await?;
            for (id, old, new) in &replacements {
                if db::encrypted::replace_if_unchanged(
                    &mut *tx, col.table, col.column, *id, old, new,
                )
                .await?
                {
                    report.resealed += 1;
                } else {
                    report.changed_meanwhile += 1;
                }
            }
            tx.commit().await?;
        }
        if (rows.len() as i64) < limit {
            break;
        }
    }
    Ok(report)
}
