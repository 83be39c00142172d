//! The word-level tokenizer of the shapes model, built with the `tokenizers` crate: the world's
//! vocabulary, the chat-template words, and the special tokens the prompt template uses.

use std::path::Path;

use super::prompts::vocabulary;

/// Special tokens, in id order after `[UNK]`.
pub const SPECIAL: &[&str] = &["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<img>", "</img>", "<IMG_CONTEXT>"];

/// Words of the instruction template (`<|im_start|>user\nGenerate an image: …`).
const TEMPLATE: &[&str] = &["user", "assistant", "Generate", "image", ":", "."];

/// Writes `tokenizer.json` (word level, whitespace/punctuation pre-tokenizer, unknown words →
/// `[UNK]`). Returns the vocabulary size.
pub fn write(path: &Path) -> Result<usize, String> {
    let mut vocab: Vec<String> = vec!["[UNK]".into()];
    vocab.extend(SPECIAL.iter().map(|s| s.to_string()));
    for w in TEMPLATE.iter().map(|s| s.to_string()).chain(vocabulary()) {
        if !vocab.contains(&w) {
            vocab.push(w);
        }
    }
    let map: serde_json::Map<String, serde_json::Value> = vocab.iter().enumerate().map(|(i, w)| (w.clone(), serde_json::json!(i))).collect();
    let added: Vec<serde_json::Value> = SPECIAL
        .iter()
        .enumerate()
        .map(|(i, s)| serde_json::json!({"id": i + 1, "content": s, "single_word": false, "lstrip": false, "rstrip": false, "normalized": false, "special": true}))
        .collect();
    let json = serde_json::json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": added,
        "normalizer": null,
        "pre_tokenizer": {"type": "Whitespace"},
        "post_processor": null,
        "decoder": {"type": "WordPiece", "prefix": "##", "cleanup": true},
        "model": {"type": "WordLevel", "vocab": map, "unk_token": "[UNK]"},
    });
    let tok: tokenizers::Tokenizer = std::str::FromStr::from_str(&json.to_string()).map_err(|e| format!("building the tokenizer: {e}"))?;
    tok.save(path, true).map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(vocab.len())
}

#[cfg(test)]
mod tests {
    use crate::prompt::{PromptTokenizer, conditional_text};

    #[test]
    fn the_template_and_captions_tokenise_without_unknown_words() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("tokenizer.json");
        let n = super::write(&path).unwrap();
        let tok = PromptTokenizer::from_file(&path).unwrap();
        let ids = tok.encode(&conditional_text("a red circle above a blue square")).unwrap();
        assert!(!ids.contains(&0), "no [UNK] in {ids:?}");
        let ids_of = |w: &str| tok.token_id(w).unwrap();
        assert_eq!(ids[0], ids_of("<|im_start|>"));
        assert!(ids.windows(2).any(|p| p == [ids_of("red"), ids_of("circle")]));
        assert_eq!(tok.token_ids(crate::config::Family::InternVl).unwrap().img_start, vec![ids_of("<img>")]);
        assert!(tok.encode("a teapot").unwrap().contains(&0), "unknown words map to [UNK]");
        assert!(n < 80, "{n}");
    }

    /// A model trained with `--prompt-echo` gets every prompt twice, the negative prompt too,
    /// and the plain unconditional text as it is; without echo nothing changes.
    #[test]
    fn an_echo_model_reads_its_prompts_twice() {
        use crate::prompt::{build_batch, echoed, unconditional_text};
        assert_eq!(echoed("  a red circle "), "a red circle. a red circle");
        assert_eq!(echoed("   "), "");
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("tokenizer.json");
        super::write(&path).unwrap();
        let plain = PromptTokenizer::from_file(&path).unwrap();
        let echo = PromptTokenizer::from_file(&path).unwrap().with_echo(true);
        let enc = |t: &str| plain.encode(t).unwrap();
        let prompt = "a red circle above a blue square";
        let b = build_batch(&echo, &[prompt], None, 1, true, 1).unwrap();
        let once = enc(&conditional_text(prompt));
        let twice = enc(&conditional_text(&format!("{prompt}. {prompt}")));
        assert_eq!(twice.len(), once.len() + 8, "seven more words and the full stop");
        assert_eq!(b.ids[0], twice);
        assert_eq!(b.ids[1][..b.mask[1].iter().filter(|&&m| m == 1).count()], enc(&unconditional_text(None))[..]);
        let b = build_batch(&echo, &[prompt], Some("a green square"), 1, true, 1).unwrap();
        let neg = enc(&conditional_text("a green square. a green square"));
        assert_eq!(b.ids[1][..neg.len()], neg[..]);
        let b = build_batch(&plain, &[prompt], None, 1, false, 1).unwrap();
        assert_eq!(b.ids[0], once);
    }
}
