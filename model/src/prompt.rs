//! Tokenizer and prompt template (spec §3.3–3.4).

use std::path::Path;

use crate::config::TokenIds;

/// The longest prompt we keep, in tokens (the LLM also has to hold up to 2·64² image tokens);
/// longer prompts are truncated with a warning.
pub const MAX_PROMPT_TOKENS: usize = 1024;

#[derive(Debug, thiserror::Error)]
pub enum PromptError {
    #[error("cannot load the tokenizer: {msg} in {}", path.display())]
    Load { msg: String, path: std::path::PathBuf },
    #[error("tokenizer failure: {0}")]
    Encode(String),
    #[error("the tokenizer has no `{token}` token, which the model needs")]
    MissingToken { token: &'static str },
}

/// The largest tokenizer file we read, before or after gzip (Qwen's is 7 MB).
pub const MAX_TOKENIZER_BYTES: u64 = 256 << 20;

/// Everything `reader` gives, or `None` as soon as it gives more than `limit` bytes.
fn read_at_most(reader: impl std::io::Read, limit: u64) -> std::io::Result<Option<Vec<u8>>> {
    use std::io::Read;
    let mut out = Vec::new();
    reader.take(limit + 1).read_to_end(&mut out)?;
    Ok((out.len() as u64 <= limit).then_some(out))
}

/// `INSTRUCTION`: the chat turn every prompt is wrapped in.
pub fn instruction(input: &str) -> String {
    format!("<|im_start|>user\n{input}<|im_end|>\n<|im_start|>assistant\n")
}

/// The conditional text for a user prompt: `INSTRUCTION(GENERATION(prompt.strip()))`.
pub fn conditional_text(prompt: &str) -> String {
    instruction(&format!("Generate an image: {}", prompt.trim()))
}

/// The prompt as a model trained with `prompt_echo` reads it: written twice (`PROMPT. PROMPT`),
/// so that in the second copy every word comes after the whole prompt. A causal LLM reads a
/// word only in the light of the words before it: in "a red circle above a blue square" the
/// circle's tokens never see "above". Tried for the embedded shapes model (`train-shapes
/// --prompt-echo`): it did not make a random-order generator read relations (README). An empty
/// prompt stays empty.
pub fn echoed(prompt: &str) -> String {
    let p = prompt.trim();
    if p.is_empty() { String::new() } else { format!("{p}. {p}") }
}

/// The unconditional (CFG) text, or a negative prompt formatted like a positive one.
pub fn unconditional_text(negative: Option<&str>) -> String {
    match negative {
        Some(n) => conditional_text(n),
        None => instruction("Generate an image."),
    }
}

/// A Qwen2 BPE tokenizer loaded from a `tokenizer.json` (optionally gzipped), and how its model
/// reads a prompt (echoed or not, [`PromptTokenizer::with_echo`]).
#[derive(Clone)]
pub struct PromptTokenizer {
    inner: tokenizers::Tokenizer,
    echo: bool,
}

impl PromptTokenizer {
    pub fn from_file(path: &Path) -> Result<Self, PromptError> {
        let load = |msg: String| PromptError::Load { msg, path: path.to_path_buf() };
        let file = crate::fsutil::open_regular(path).map_err(|e| load(e.to_string()))?;
        let bytes = read_at_most(file, MAX_TOKENIZER_BYTES)
            .map_err(|e| load(e.to_string()))?
            .ok_or_else(|| load(format!("larger than {} MiB", MAX_TOKENIZER_BYTES >> 20)))?;
        let bytes = if bytes.starts_with(&[0x1f, 0x8b]) {
            // Bounded: a small gzip bomb must not fill the memory.
            read_at_most(flate2::read::GzDecoder::new(&bytes[..]), MAX_TOKENIZER_BYTES)
                .map_err(|e| load(format!("bad gzip ({e})")))?
                .ok_or_else(|| load(format!("decompresses to more than {} MiB", MAX_TOKENIZER_BYTES >> 20)))?
        } else {
            bytes
        };
        let inner = tokenizers::Tokenizer::from_bytes(&bytes).map_err(|e| load(e.to_string()))?;
        Ok(Self { inner, echo: false })
    }

    /// The tokenizer of a model with `config`: read from `path`, with the model's prompt echo,
    /// and checked against the model (its special tokens present, every id within the model's
    /// vocabulary). Returns the special ids too.
    pub fn for_model(path: &Path, config: &crate::config::VgtConfig) -> Result<(Self, TokenIds), PromptError> {
        let tok = Self::from_file(path)?.with_echo(config.prompt_echo);
        let ids = tok.token_ids(config.family())?;
        let size = tok.inner.get_vocab_size(true);
        if size > config.llm.vocab_size {
            return Err(PromptError::Load {
                msg: format!("it has {size} tokens but the model's vocabulary has {}", config.llm.vocab_size),
                path: path.to_path_buf(),
            });
        }
        Ok((tok, ids))
    }

    /// For a model that reads each prompt twice (`VgtConfig::prompt_echo`).
    pub fn with_echo(mut self, echo: bool) -> Self {
        self.echo = echo;
        self
    }

    /// The conditional text of `prompt` as this tokenizer's model reads it: the template around
    /// the prompt, or around [`echoed`] prompt.
    pub fn conditional(&self, prompt: &str) -> String {
        if self.echo { conditional_text(&echoed(prompt)) } else { conditional_text(prompt) }
    }

    /// Token ids of `text`, special tokens parsed as atoms; Qwen2 adds no BOS/EOS.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>, PromptError> {
        let enc = self.inner.encode(text, false).map_err(|e| PromptError::Encode(e.to_string()))?;
        Ok(enc.get_ids().to_vec())
    }

    pub fn decode(&self, ids: &[u32]) -> Result<String, PromptError> {
        self.inner.decode(ids, false).map_err(|e| PromptError::Encode(e.to_string()))
    }

    /// The id of a special token, if the vocabulary has it.
    pub fn token_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    /// The special ids of this tokenizer for a model of `family`; each must be in its vocabulary
    /// (a guessed id would index past the embeddings). `<img>` is one added token of InternVL3's
    /// tokenizer (a tokenizer without it belongs to another model), but ordinary text for
    /// Qwen2.5-VL, whose image-start embedding is `encode("<img>")` (two BPE pieces, spec §3.3).
    pub fn token_ids(&self, family: crate::config::Family) -> Result<TokenIds, PromptError> {
        let id = |token: &'static str| self.token_id(token).ok_or(PromptError::MissingToken { token });
        // What the reference embeds either way is `tokenizer.encode("<img>")`.
        let img_start = match family {
            crate::config::Family::Qwen25Vl => self.encode("<img>")?,
            crate::config::Family::InternVl => vec![id("<img>")?],
        };
        if img_start.is_empty() {
            return Err(PromptError::MissingToken { token: "<img>" });
        }
        Ok(TokenIds { pad: id("<|endoftext|>")?, im_start: id("<|im_start|>")?, im_end: id("<|im_end|>")?, img_start })
    }
}

/// A right-padded CFG batch (spec §3.4): rows `[c₁×n, c₂×n, …, u₁×n, u₂×n, …]`.
#[derive(Debug, Clone, PartialEq)]
pub struct PromptBatch {
    /// `[rows][len]` token ids, right-padded with the pad id.
    pub ids: Vec<Vec<u32>>,
    /// `[rows][len]` 1 for real tokens, 0 for padding.
    pub mask: Vec<Vec<u8>>,
    /// Number of conditional rows (the first half when CFG is on).
    pub cond_rows: usize,
    /// What was changed on the way (truncated prompts), for the user to see.
    pub warnings: Vec<String>,
}

/// Trims `text` and cuts it to [`MAX_PROMPT_TOKENS`] tokens; returns a warning when it cut.
pub fn fit_prompt(tok: &PromptTokenizer, text: &str) -> Result<(String, Option<String>), PromptError> {
    let text = text.trim();
    let ids = tok.encode(text)?;
    if ids.len() <= MAX_PROMPT_TOKENS {
        return Ok((text.to_string(), None));
    }
    let cut = tok.decode(&ids[..MAX_PROMPT_TOKENS])?;
    let warning = format!("the prompt has {} tokens; only the first {MAX_PROMPT_TOKENS} are used", ids.len());
    Ok((cut.trim().to_string(), Some(warning)))
}

impl PromptBatch {
    pub fn len(&self) -> usize {
        self.ids.first().map_or(0, Vec::len)
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Tokenises `prompts` (each repeated `copies` times) and, when `cfg` is on, the matching
/// unconditional rows, then right-pads every row to the longest with `pad`. An empty prompt is
/// allowed (the reference formats it like any other); long prompts are truncated with a warning.
pub fn build_batch(
    tok: &PromptTokenizer,
    prompts: &[&str],
    negative: Option<&str>,
    copies: usize,
    cfg: bool,
    pad: u32,
) -> Result<PromptBatch, PromptError> {
    let mut rows = Vec::new();
    let mut warnings = Vec::new();
    for p in prompts {
        let (text, warning) = fit_prompt(tok, p)?;
        warnings.extend(warning);
        let ids = tok.encode(&tok.conditional(&text))?;
        rows.extend(std::iter::repeat_n(ids, copies));
    }
    let cond_rows = rows.len();
    if cfg {
        let uncond = match negative {
            Some(n) => {
                let (text, warning) = fit_prompt(tok, n)?;
                warnings.extend(warning.map(|w| format!("negative: {w}")));
                tok.conditional(&text)
            }
            None => unconditional_text(None),
        };
        let uncond = tok.encode(&uncond)?;
        rows.extend(std::iter::repeat_n(uncond, cond_rows));
    }
    let (ids, mask) = right_pad(rows, pad);
    Ok(PromptBatch { ids, mask, cond_rows, warnings })
}

/// Right-pads token rows to the longest with `pad`; returns the rows and their masks
/// (1 = real token, 0 = padding).
pub fn right_pad(rows: Vec<Vec<u32>>, pad: u32) -> (Vec<Vec<u32>>, Vec<Vec<u8>>) {
    let len = rows.iter().map(Vec::len).max().unwrap_or(0);
    let mask = rows.iter().map(|r| (0..len).map(|i| u8::from(i < r.len())).collect()).collect();
    let ids = rows
        .into_iter()
        .map(|mut r| {
            r.resize(len, pad);
            r
        })
        .collect();
    (ids, mask)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn template_matches_the_spec() {
        assert_eq!(
            conditional_text("  a cat "),
            "<|im_start|>user\nGenerate an image: a cat<|im_end|>\n<|im_start|>assistant\n"
        );
        assert_eq!(unconditional_text(None), "<|im_start|>user\nGenerate an image.<|im_end|>\n<|im_start|>assistant\n");
        assert_eq!(unconditional_text(Some("blurry")), conditional_text("blurry"));
    }
}
