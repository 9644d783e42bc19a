//! How the CLI prints: aligned tables for people, the API's JSON for scripts.

/// A table's header row.
pub fn header(names: &[&str]) -> Vec<String> {
    names.iter().map(|n| (*n).to_owned()).collect()
}

/// Prints rows with each column as wide as its widest cell (by characters, not bytes).
pub fn table(rows: &[Vec<String>]) {
    let columns = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..columns)
        .map(|c| {
            rows.iter()
                .filter_map(|r| r.get(c))
                .map(|cell| cell.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    for r in rows {
        let line: Vec<String> = r
            .iter()
            .zip(&widths)
            .map(|(cell, w)| format!("{cell:<w$}"))
            .collect();
        println!("{}", line.join("  ").trim_end());
    }
}

/// Prints an API answer as JSON, on one line.
pub fn json(body: &[u8]) -> crate::Result<()> {
    let value: serde_json::Value = serde_json::from_slice(body)?;
    println!("{value}");
    Ok(())
}
