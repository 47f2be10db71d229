//! `replica-sink verify`: compares DB1 and DB2 article by article and reports the drift.
//!
//! Both tables are read in id order in chunks of [`CHUNK`] rows (keyset pagination, so memory
//! stays flat however many articles there are) and merge-joined; each row is reduced to a SHA-256
//! digest of its columns in a canonical encoding (the event JSON of the article, which both sides
//! decode to the same types), and digests are compared.

use std::collections::VecDeque;

use events::{Article, article_columns};
use service_kit::config::DatabaseUrl;
use sha2::{Digest, Sha256};

/// Rows read per query.
const CHUNK: i64 = 5_000;
/// Ids listed per kind of difference in the report.
const SAMPLE: usize = 20;

/// What differs between the two databases.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Drift {
    pub primary_rows: u64,
    pub replica_rows: u64,
    /// Articles in DB1 and not in DB2 (count, first ids).
    pub missing: (u64, Vec<i64>),
    /// Articles in DB2 and not in DB1.
    pub extra: (u64, Vec<i64>),
    /// Articles in both whose columns differ.
    pub differing: (u64, Vec<i64>),
}

impl Drift {
    pub fn is_identical(&self) -> bool {
        self.missing.0 == 0 && self.extra.0 == 0 && self.differing.0 == 0
    }
}

impl std::fmt::Display for Drift {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "primary (DB1): {} articles, replica (DB2): {} articles", self.primary_rows, self.replica_rows)?;
        writeln!(f, "missing in the replica: {} {:?}", self.missing.0, self.missing.1)?;
        writeln!(f, "extra in the replica:   {} {:?}", self.extra.0, self.extra.1)?;
        writeln!(f, "differing:              {} {:?}", self.differing.0, self.differing.1)?;
        write!(f, "verdict: {}", if self.is_identical() { "IDENTICAL" } else { "DRIFT" })
    }
}

fn note(kind: &mut (u64, Vec<i64>), id: i64) {
    kind.0 += 1;
    if kind.1.len() < SAMPLE {
        kind.1.push(id);
    }
}

/// One side of the merge: the next `(id, digest)` in id order.
struct DigestReader {
    client: tokio_postgres::Client,
    after: i64,
    buffer: VecDeque<(i64, [u8; 32])>,
    exhausted: bool,
    rows: u64,
}

impl DigestReader {
    async fn open(url: &DatabaseUrl) -> Result<Self, service_kit::db::DbError> {
        Ok(Self {
            client: service_kit::db::connect(url).await?,
            after: i64::MIN,
            buffer: VecDeque::new(),
            exhausted: false,
            rows: 0,
        })
    }

    async fn next(&mut self) -> Result<Option<(i64, [u8; 32])>, VerifyError> {
        if self.buffer.is_empty() && !self.exhausted {
            let rows = self
                .client
                .query(
                    concat!("SELECT ", article_columns!(), " FROM articles WHERE id > $1 ORDER BY id LIMIT $2"),
                    &[&self.after, &CHUNK],
                )
                .await?;
            self.exhausted = (rows.len() as i64) < CHUNK;
            for row in &rows {
                let article = Article::from_row(row)?;
                self.after = article.id;
                self.buffer.push_back((article.id, digest(&article)?));
            }
        }
        let next = self.buffer.pop_front();
        self.rows += u64::from(next.is_some());
        Ok(next)
    }
}

/// SHA-256 of the article's canonical encoding.
pub fn digest(article: &Article) -> Result<[u8; 32], serde_json::Error> {
    Ok(Sha256::digest(serde_json::to_vec(article)?).into())
}

#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    #[error(transparent)]
    Connect(#[from] service_kit::db::DbError),
    #[error("query failed")]
    Query(#[from] tokio_postgres::Error),
    #[error("cannot encode an article")]
    Encode(#[from] serde_json::Error),
}

/// Compares every article of `primary` (DB1) with `replica` (DB2).
pub async fn compare(primary: &DatabaseUrl, replica: &DatabaseUrl) -> Result<Drift, VerifyError> {
    let (mut left, mut right) = (DigestReader::open(primary).await?, DigestReader::open(replica).await?);
    let mut drift = Drift::default();
    let (mut a, mut b) = (left.next().await?, right.next().await?);
    loop {
        match (a, b) {
            (None, None) => break,
            (Some((id, _)), None) => {
                note(&mut drift.missing, id);
                a = left.next().await?;
            }
            (None, Some((id, _))) => {
                note(&mut drift.extra, id);
                b = right.next().await?;
            }
            (Some((id_a, digest_a)), Some((id_b, digest_b))) => {
                if id_a < id_b {
                    note(&mut drift.missing, id_a);
                    a = left.next().await?;
                } else if id_b < id_a {
                    note(&mut drift.extra, id_b);
                    b = right.next().await?;
                } else {
                    if digest_a != digest_b {
                        note(&mut drift.differing, id_a);
                    }
                    a = left.next().await?;
                    b = right.next().await?;
                }
            }
        }
    }
    drift.primary_rows = left.rows;
    drift.replica_rows = right.rows;
    Ok(drift)
}
