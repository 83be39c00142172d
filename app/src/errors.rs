//! How an error reaches the user: one line, each cause once.

/// The error and its causes joined by ": ", leaving out a cause whose text the line already
/// holds (our error types print their source themselves, and `anyhow` would print it again:
/// "cannot read X: No such file (os error 2): No such file (os error 2)").
pub fn report(e: &anyhow::Error) -> String {
    let mut line = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if text.is_empty() || line.contains(&text) {
            continue;
        }
        if !line.is_empty() {
            line.push_str(": ");
        }
        line.push_str(&text);
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;
    use anyhow::Context;

    #[test]
    fn each_cause_is_said_once() {
        let io = std::io::Error::from(std::io::ErrorKind::NotFound);
        let inner = vgt_model::weights::WeightError::Io { path: "/x/ar.pth".into(), source: io };
        let e = Err::<(), _>(inner.in_file(std::path::Path::new("/x/ar.pth"))).context("loading the model in /x").unwrap_err();
        assert_eq!(report(&e), "loading the model in /x: cannot read /x/ar.pth: entity not found");
        let wrapped = vgt_model::weights::WeightError::Format("bad header".into()).in_file(std::path::Path::new("/m/model.safetensors"));
        let e = Err::<(), _>(wrapped).context("loading").unwrap_err();
        assert_eq!(report(&e), "loading: bad header in /m/model.safetensors");
    }
}
