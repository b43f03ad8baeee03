//! Where a visitor is: a country code from a MaxMind or DB-IP country database the owner
//! downloads (`[geo] mmdb`), or from a header a trusted proxy sets (`[geo] header`).
//!
//! The database is read whole into memory once and swapped atomically when it is
//! reloaded (SIGHUP), so a lookup takes no lock and a reload never stalls a redirect. A
//! lookup reads the country's code in place, without decoding the rest of the record.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, LazyLock};

use arc_swap::ArcSwap;
use maxminddb::{PathElement, Reader};

/// A country as two upper-case ASCII letters.
pub type Country = [u8; 2];

/// ISO 3166-1 alpha-2 codes in use, and `XK` (Kosovo), which databases and CDNs use too.
const COUNTRIES: &str = "AD AE AF AG AI AL AM AO AQ AR AS AT AU AW AX AZ BA BB BD BE BF BG BH BI BJ BL BM BN BO BQ \
BR BS BT BV BW BY BZ CA CC CD CF CG CH CI CK CL CM CN CO CR CU CV CW CX CY CZ DE DJ DK DM DO DZ EC EE EG EH ER ES ET \
FI FJ FK FM FO FR GA GB GD GE GF GG GH GI GL GM GN GP GQ GR GS GT GU GW GY HK HM HN HR HT HU ID IE IL IM IN IO IQ IR \
IS IT JE JM JO JP KE KG KH KI KM KN KP KR KW KY KZ LA LB LC LI LK LR LS LT LU LV LY MA MC MD ME MF MG MH MK ML MM MN \
MO MP MQ MR MS MT MU MV MW MX MY MZ NA NC NE NF NG NI NL NO NP NR NU NZ OM PA PE PF PG PH PK PL PM PN PR PS PT PW PY \
QA RE RO RS RU RW SA SB SC SD SE SG SH SI SJ SK SL SM SN SO SR SS ST SV SX SY SZ TC TD TF TG TH TJ TK TL TM TN TO TR \
TT TV TW TZ UA UG UM US UY UZ VA VC VE VG VI VN VU WF WS XK YE YT ZA ZM ZW";

/// The codes of [`COUNTRIES`] as a bit per second letter, one word per first letter: a
/// lookup is two indexes, not a scan (a country lookup runs per click).
static KNOWN: LazyLock<[u32; 26]> = LazyLock::new(|| {
    let mut known = [0u32; 26];
    for code in COUNTRIES.split(' ').map(str::as_bytes) {
        known[usize::from(code[0] - b'A')] |= 1 << (code[1] - b'A');
    }
    known
});

/// Whether `code` is a country code a rule may name (upper case, as written in rules).
pub fn is_country_code(code: &str) -> bool {
    match code.as_bytes() {
        &[a, b] => is_known([a, b]),
        _ => false,
    }
}

/// Whether two bytes are a known code, upper case.
fn is_known([a, b]: Country) -> bool {
    a.is_ascii_uppercase() && b.is_ascii_uppercase() && KNOWN[usize::from(a - b'A')] & (1 << (b - b'A')) != 0
}

/// A country code as a header or database gives it (any case); `None` for the values
/// that mean "unknown" (`XX`, `T1`) or anything else that is not a code.
pub fn parse_country(text: &str) -> Option<Country> {
    let b = text.trim().as_bytes();
    if b.len() != 2 || !b.iter().all(u8::is_ascii_alphabetic) {
        return None;
    }
    let code = [b[0].to_ascii_uppercase(), b[1].to_ascii_uppercase()];
    is_known(code).then_some(code)
}

/// A country database in memory, reloadable.
pub struct CountryDb {
    path: PathBuf,
    reader: ArcSwap<Reader<Vec<u8>>>,
}

impl std::fmt::Debug for CountryDb {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CountryDb").field("path", &self.path).finish_non_exhaustive()
    }
}

/// Why a country database did not load; the message names the file, the source says why.
#[derive(Debug, thiserror::Error)]
pub enum CountryDbError {
    #[error("cannot read {}: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{} is not a MaxMind DB file: {source}", path.display())]
    Format {
        path: PathBuf,
        #[source]
        source: maxminddb::MaxMindDbError,
    },
}

fn read(path: &Path) -> Result<Reader<Vec<u8>>, CountryDbError> {
    let bytes = std::fs::read(path).map_err(|source| CountryDbError::Read { path: path.to_owned(), source })?;
    Reader::from_source(bytes).map_err(|source| CountryDbError::Format { path: path.to_owned(), source })
}

impl CountryDb {
    /// Reads the database at `path`.
    pub fn open(path: &Path) -> Result<CountryDb, CountryDbError> {
        Ok(CountryDb { path: path.to_owned(), reader: ArcSwap::from_pointee(read(path)?) })
    }

    /// Reads the file again; on failure the database in use stays.
    pub fn reload(&self) -> Result<(), CountryDbError> {
        self.reader.store(Arc::new(read(&self.path)?));
        Ok(())
    }

    /// The country of `ip`: the record's `country`, else its `registered_country`.
    pub fn country(&self, ip: IpAddr) -> Option<Country> {
        let reader = self.reader.load();
        let found = reader.lookup(ip).ok()?;
        for top in ["country", "registered_country"] {
            let path = [PathElement::Key(top), PathElement::Key("iso_code")];
            if let Ok(Some(code)) = found.decode_path::<&str>(&path) {
                return parse_country(code);
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_checked_against_the_list() {
        assert!(is_country_code("US") && is_country_code("DE") && is_country_code("XK"));
        assert!(!is_country_code("us") && !is_country_code("XY") && !is_country_code("USA"));
        assert_eq!(parse_country(" us"), Some(*b"US"));
        assert_eq!(parse_country("XX"), None);
        assert_eq!(parse_country("T1"), None);
        assert_eq!(COUNTRIES.split(' ').count(), 250);
        assert_eq!(KNOWN.iter().map(|w| w.count_ones()).sum::<u32>(), 250, "no code listed twice");
        assert!(!is_country_code("U") && !is_country_code("ÜS"));
    }

    #[test]
    fn a_file_that_is_no_database_is_explained() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.mmdb");
        std::fs::write(&path, b"not a database").unwrap();
        assert!(CountryDb::open(&path).unwrap_err().to_string().contains("not a MaxMind DB"));
        assert!(CountryDb::open(&dir.path().join("missing")).unwrap_err().to_string().contains("cannot read"));
    }
}
