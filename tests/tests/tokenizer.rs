//! The tokenizer and prompt template against real Qwen tokenizer files and golden ids.

use vgt_model::prompt::{self, MAX_PROMPT_TOKENS, PromptTokenizer, build_batch};
use vgt_tests::data_dir;

fn internvl3() -> PromptTokenizer {
    PromptTokenizer::from_file(&data_dir().join("tokenizer/internvl3_tokenizer.json.gz")).unwrap()
}

#[test]
fn golden_internvl3_ids() {
    let tok = internvl3();
    let text = std::fs::read_to_string(data_dir().join("tokenizer/golden_internvl3_ids.jsonl")).unwrap();
    let mut n = 0;
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let row: serde_json::Value = serde_json::from_str(line).unwrap();
        let s = row["text"].as_str().unwrap();
        let want: Vec<u32> = row["ids"].as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as u32).collect();
        assert_eq!(tok.encode(s).unwrap(), want, "{s:?}");
        assert_eq!(tok.decode(&want).unwrap(), s);
        n += 1;
    }
    assert_eq!(n, 28);
}

#[test]
fn llama_cpp_qwen2_vocab_cases() {
    let dir = data_dir().join("tokenizer");
    let inp = std::fs::read_to_string(dir.join("llamacpp_qwen2_vocab_test.inp")).unwrap();
    let out = std::fs::read_to_string(dir.join("llamacpp_qwen2_vocab_test.out")).unwrap();
    // The file ends with a separator: the 47th case is the empty string after it.
    let inputs: Vec<&str> = inp.split("\n__ggml_vocab_test__\n").collect();
    let mut expected: Vec<Vec<u32>> =
        out.lines().map(|l| l.split_whitespace().map(|x| x.parse().unwrap()).collect()).collect();
    expected.push(Vec::new());
    assert_eq!(inputs.len(), 47);
    assert_eq!(expected.len(), inputs.len());
    for tok in [internvl3(), PromptTokenizer::from_file(&dir.join("qwen3_tokenizer.json")).unwrap()] {
        for (s, want) in inputs.iter().zip(&expected) {
            assert_eq!(&tok.encode(s).unwrap(), want, "{s:?}");
        }
    }
}

#[test]
fn special_tokens_and_template_ids() {
    let tok = internvl3();
    let ids = tok.token_ids(vgt_model::config::Family::InternVl).unwrap();
    assert_eq!((ids.pad, ids.im_start, ids.im_end, ids.img_start), (151643, 151644, 151645, vec![151665]));
    assert_eq!(tok.encode("<img>").unwrap(), vec![151665]);
    let uncond = tok.encode(&prompt::unconditional_text(None)).unwrap();
    assert_eq!(uncond[..3], [151644, 872, 198]);
}

#[test]
fn cfg_batch_layout_is_cond_rows_then_uncond_rows_right_padded() {
    let tok = internvl3();
    let batch = build_batch(&tok, &["a photo of a bench", "a cat"], None, 2, true, 151643).unwrap();
    assert_eq!(batch.ids.len(), 8);
    assert_eq!(batch.cond_rows, 4);
    let bench = tok.encode(&prompt::conditional_text("a photo of a bench")).unwrap();
    let uncond = tok.encode(&prompt::unconditional_text(None)).unwrap();
    assert_eq!(batch.len(), bench.len());
    assert_eq!(batch.ids[0], bench);
    assert_eq!(batch.ids[1], bench);
    assert_eq!(&batch.ids[4][..uncond.len()], &uncond[..]);
    assert!(batch.ids[4][uncond.len()..].iter().all(|&t| t == 151643));
    assert_eq!(batch.mask[4].iter().map(|&m| m as usize).sum::<usize>(), uncond.len());
    assert!(batch.mask[0].iter().all(|&m| m == 1));
}

#[test]
fn an_empty_prompt_is_formatted_and_an_enormous_one_truncated() {
    let tok = internvl3();
    let batch = build_batch(&tok, &["   "], None, 1, true, 151643).unwrap();
    assert_eq!(batch.ids[0][..batch.mask[0].iter().filter(|&&m| m == 1).count()], tok.encode(&prompt::conditional_text("")).unwrap()[..]);
    assert!(batch.warnings.is_empty());
    let huge = "word ".repeat(5000);
    let batch = build_batch(&tok, &[huge.as_str()], None, 1, true, 151643).unwrap();
    assert_eq!(batch.warnings.len(), 1, "{:?}", batch.warnings);
    assert!(batch.warnings[0].contains("5000 tokens"), "{:?}", batch.warnings);
    let template = tok.encode(&prompt::conditional_text("")).unwrap().len();
    let kept = batch.mask[0].iter().filter(|&&m| m == 1).count();
    assert!(kept <= template + MAX_PROMPT_TOKENS + 1 && kept >= template + MAX_PROMPT_TOKENS - 1, "{kept}");
}
