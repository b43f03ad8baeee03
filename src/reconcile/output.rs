//! The report as a table for people and as CSV for spreadsheets; both carry the rows of
//! the JSON form.

use std::fmt::Write as _;

use super::Report;

/// Most characters of one cell the table shows; CSV and JSON carry everything.
const CELL_MAX: usize = 36;

/// A plain-text table: the totals, then each list, then the days.
pub fn table(r: &Report) -> String {
    let t = &r.totals;
    let mut out = String::new();
    let _ = writeln!(out, "Reconciliation of {} from {} to {}", r.network, r.from, r.to);
    let _ = writeln!(out);
    out.push_str(&grid(
        &["network", "cakelink", "matched", "missing", "extra", "amount mismatch", "gap"],
        &[vec![
            t.network.to_string(),
            t.cakelink.to_string(),
            t.matched.to_string(),
            t.missing.to_string(),
            t.extra.to_string(),
            t.amount_mismatch.to_string(),
            format!("{}%", t.gap_pct),
        ]],
    ));
    section(
        &mut out,
        "Missing: the network has them, cakelink does not",
        &["click id", "transaction id", "price", "converted at", "offer", "reason"],
        r.missing
            .iter()
            .map(|m| {
                vec![
                    m.click_id.clone(),
                    m.transaction_id.clone(),
                    m.price.clone(),
                    m.converted_at.clone(),
                    m.offer.clone(),
                    m.reason.as_str().to_owned(),
                ]
            })
            .collect(),
    );
    section(
        &mut out,
        "Extra: cakelink has them, the network does not",
        &["conversion id", "click id", "transaction id", "revenue", "converted at"],
        r.extra
            .iter()
            .map(|e| {
                vec![
                    e.conversion_id.clone(),
                    e.click_id.clone(),
                    e.transaction_id.clone(),
                    e.revenue.clone(),
                    e.converted_at.clone(),
                ]
            })
            .collect(),
    );
    section(
        &mut out,
        "Amount mismatch",
        &["conversion id", "click id", "transaction id", "network price", "cakelink revenue"],
        r.amount_mismatch
            .iter()
            .map(|a| {
                vec![
                    a.conversion_id.clone(),
                    a.click_id.clone(),
                    a.transaction_id.clone(),
                    a.network_price.clone(),
                    a.cakelink_revenue.clone(),
                ]
            })
            .collect(),
    );
    section(
        &mut out,
        "By day",
        &["day", "network", "cakelink", "missing", "extra"],
        r.by_day
            .iter()
            .map(|d| {
                vec![
                    d.day.clone(),
                    d.network.to_string(),
                    d.cakelink.to_string(),
                    d.missing.to_string(),
                    d.extra.to_string(),
                ]
            })
            .collect(),
    );
    out
}

fn section(out: &mut String, title: &str, header: &[&str], rows: Vec<Vec<String>>) {
    let _ = writeln!(out, "\n{title} ({})", rows.len());
    if !rows.is_empty() {
        out.push_str(&grid(header, &rows));
    }
}

/// Columns padded to their widest cell; text the network wrote is shown without control
/// characters and cut at [`CELL_MAX`].
fn grid(header: &[&str], rows: &[Vec<String>]) -> String {
    let shown: Vec<Vec<String>> = rows.iter().map(|r| r.iter().map(|c| printable(c)).collect()).collect();
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in &shown {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let mut line = |cells: &mut dyn Iterator<Item = &str>| {
        let text: Vec<String> = cells.zip(&widths).map(|(c, w)| format!("{c:<w$}")).collect();
        let _ = writeln!(out, "  {}", text.join("  ").trim_end());
    };
    line(&mut header.iter().copied());
    for row in &shown {
        line(&mut row.iter().map(String::as_str));
    }
    out
}

fn printable(cell: &str) -> String {
    let mut shown: String = cell.chars().map(|c| if c.is_control() { '?' } else { c }).take(CELL_MAX).collect();
    if cell.chars().count() > CELL_MAX {
        shown.pop();
        shown.push('…');
    }
    shown
}

/// One CSV: a `kind` column (`total`, `missing`, `extra`, `amount_mismatch`, `day`) and
/// the union of the fields of each kind.
pub fn csv(r: &Report) -> Result<Vec<u8>, csv::Error> {
    const HEADER: [&str; 17] = [
        "kind",
        "day",
        "click_id",
        "transaction_id",
        "conversion_id",
        "network_price",
        "cakelink_revenue",
        "converted_at",
        "offer",
        "reason",
        "network",
        "cakelink",
        "matched",
        "missing",
        "extra",
        "amount_mismatch",
        "gap_pct",
    ];
    let mut w = csv::Writer::from_writer(Vec::new());
    w.write_record(HEADER)?;
    let mut put = |fields: &[(&str, &str)]| -> Result<(), csv::Error> {
        let record: Vec<&str> =
            HEADER.iter().map(|h| fields.iter().find(|(k, _)| k == h).map_or("", |(_, v)| *v)).collect();
        w.write_record(record)
    };
    let t = &r.totals;
    let n = |v: u64| v.to_string();
    put(&[
        ("kind", "total"),
        ("network", &n(t.network)),
        ("cakelink", &n(t.cakelink)),
        ("matched", &n(t.matched)),
        ("missing", &n(t.missing)),
        ("extra", &n(t.extra)),
        ("amount_mismatch", &n(t.amount_mismatch)),
        ("gap_pct", &t.gap_pct),
    ])?;
    for m in &r.missing {
        put(&[
            ("kind", "missing"),
            ("click_id", &m.click_id),
            ("transaction_id", &m.transaction_id),
            ("network_price", &m.price),
            ("converted_at", &m.converted_at),
            ("offer", &m.offer),
            ("reason", m.reason.as_str()),
        ])?;
    }
    for e in &r.extra {
        put(&[
            ("kind", "extra"),
            ("conversion_id", &e.conversion_id),
            ("click_id", &e.click_id),
            ("transaction_id", &e.transaction_id),
            ("cakelink_revenue", &e.revenue),
            ("converted_at", &e.converted_at),
        ])?;
    }
    for a in &r.amount_mismatch {
        put(&[
            ("kind", "amount_mismatch"),
            ("conversion_id", &a.conversion_id),
            ("click_id", &a.click_id),
            ("transaction_id", &a.transaction_id),
            ("network_price", &a.network_price),
            ("cakelink_revenue", &a.cakelink_revenue),
        ])?;
    }
    for d in &r.by_day {
        put(&[
            ("kind", "day"),
            ("day", &d.day),
            ("network", &n(d.network)),
            ("cakelink", &n(d.cakelink)),
            ("missing", &n(d.missing)),
            ("extra", &n(d.extra)),
        ])?;
    }
    w.into_inner().map_err(|e| e.into_error().into())
}
