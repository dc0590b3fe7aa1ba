# Tiny random Hugging Face checkpoints of each family, saved by transformers itself, with their logits on
# a fixed prompt (float32, eager attention): the independent reference for our Hugging Face loaders.
#   python3 tools/hf-reference/hf_models.py OUT_DIR models/quest-tiny-8k [name,name]   (then hf_check.mjs OUT_DIR)
# Written for transformers 5 (rope_parameters); norms are perturbed so that every norm weight matters.
import json, os, shutil, sys, traceback
import torch
import transformers as T
out = sys.argv[1]; tok_dir = sys.argv[2]
ids = [(i * 7919 + 13) % 4000 + 50 for i in range(72)]
common = dict(vocab_size=4096, hidden_size=128, intermediate_size=256, num_hidden_layers=4, num_attention_heads=4,
              num_key_value_heads=2, max_position_embeddings=4096, tie_word_embeddings=False)
specs = {
  'qwen3': ('Qwen3Config', 'Qwen3ForCausalLM', dict(head_dim=48, rope_theta=1e6)),
  'qwen3-yarn': ('Qwen3Config', 'Qwen3ForCausalLM', dict(head_dim=32, rope_parameters={'rope_type': 'yarn', 'factor': 4.0, 'original_max_position_embeddings': 32, 'rope_theta': 10000.0})),
  'qwen2-yarn': ('Qwen2Config', 'Qwen2ForCausalLM', dict(rope_parameters={'rope_type': 'yarn', 'factor': 4.0, 'original_max_position_embeddings': 32, 'rope_theta': 10000.0})),
  'llama3-rope': ('LlamaConfig', 'LlamaForCausalLM', dict(rope_parameters={'rope_type': 'llama3', 'factor': 8.0, 'low_freq_factor': 1.0, 'high_freq_factor': 4.0, 'original_max_position_embeddings': 32, 'rope_theta': 500000.0})),
  'phi3-longrope': ('Phi3Config', 'Phi3ForCausalLM', dict(pad_token_id=0, bos_token_id=1, eos_token_id=2, partial_rotary_factor=0.75, original_max_position_embeddings=32,
       rope_parameters={'rope_type': 'longrope', 'short_factor': [1.0 + 0.02 * i for i in range(12)], 'long_factor': [1.0 + 0.5 * i for i in range(12)], 'rope_theta': 10000.0, 'original_max_position_embeddings': 32})),
  'phi3-short': ('Phi3Config', 'Phi3ForCausalLM', dict(pad_token_id=0, bos_token_id=1, eos_token_id=2, original_max_position_embeddings=4096,
       rope_parameters={'rope_type': 'longrope', 'short_factor': [1.0 + 0.05 * i for i in range(16)], 'long_factor': [1.0 + 0.5 * i for i in range(16)], 'rope_theta': 10000.0, 'original_max_position_embeddings': 4096})),
  'mistral-swa': ('MistralConfig', 'MistralForCausalLM', dict(sliding_window=12)),
  'gemma3': ('Gemma3TextConfig', 'Gemma3ForCausalLM', dict(head_dim=32, sliding_window=12, query_pre_attn_scalar=24, layer_types=['sliding_attention', 'sliding_attention', 'sliding_attention', 'full_attention'],
       rope_parameters={'full_attention': {'rope_type': 'linear', 'factor': 2.0, 'rope_theta': 1e6}, 'sliding_attention': {'rope_type': 'default', 'rope_theta': 10000.0}})),
}
report = {'transformers': T.__version__}
only = sys.argv[3].split(',') if len(sys.argv) > 3 else None
for name, (cfg_cls, model_cls, extra) in specs.items():
    if only and name not in only: continue
    try:
        kw = dict(common); kw.update(extra)
        if name == 'gemma3': kw['tie_word_embeddings'] = True
        cfg = getattr(T, cfg_cls)(**kw)
        cfg._attn_implementation = 'eager'
        torch.manual_seed(0)
        m = getattr(T, model_cls)(cfg).float().eval()
        with torch.no_grad():
            for n, p in m.named_parameters():
                if 'norm' in n: p.add_(torch.randn_like(p) * 0.2)
        d = os.path.join(out, name); os.makedirs(d, exist_ok=True)
        m.save_pretrained(d, safe_serialization=True)
        for f in ['tokenizer.json', 'tokenizer_config.json']: shutil.copy(os.path.join(tok_dir, f), d)
        with torch.no_grad():
            logits = m(torch.tensor([ids])).logits[0].float()
        json.dump({'ids': ids, 'logits': logits.tolist()}, open(os.path.join(d, 'reference-logits.json'), 'w'))
        report[name] = 'ok'
    except Exception as e:
        report[name] = traceback.format_exc()[-1500:]
json.dump(report, open(os.path.join(out, 'report.json'), 'w'), indent=1)
print(json.dumps(report, indent=1)[:3000])
