// Text <-> token ids through Hugging Face's tokenizers.js (tokenizer.json), plus chat templates
// through @huggingface/jinja. GGUF and llama2.c vocabularies are turned into a tokenizer.json first
// (see from-gguf.ts, from-llama2c.ts), so one well-kept implementation does all the tokenizing.
import { Tokenizer as HFTokenizer } from '@huggingface/tokenizers';
import { Template } from '@huggingface/jinja';

export interface ChatMessage { role: 'system' | 'user' | 'assistant'; content: string }

export interface TokenizerSpec {
  json: Record<string, unknown>;       // tokenizer.json
  config: Record<string, unknown>;     // tokenizer_config.json (may be {})
  bosId: number | null;
  eosIds: number[];
  addBos: boolean;                     // whether prompts start with BOS
  chatTemplate: string | null;
}

export class TextTokenizer {
  private readonly hf: HFTokenizer;
  readonly bosId: number | null;
  readonly eosIds: number[];
  readonly addBos: boolean;
  readonly chatTemplate: string | null;
  private template: Template | null = null;

  constructor(spec: TokenizerSpec) {
    try {
      this.hf = new HFTokenizer(spec.json, spec.config);
    } catch (e) {
      throw new Error(`cannot build the tokenizer: ${(e as Error).message}`);
    }
    this.bosId = spec.bosId;
    this.eosIds = spec.eosIds;
    this.addBos = spec.addBos;
    this.chatTemplate = spec.chatTemplate;
  }

  get vocabSize(): number { return this.hf.get_vocab(true).size; }

  /** Token ids of `text`; BOS first when the model expects it (and `bos` is not false). */
  encode(text: string, opts: { bos?: boolean } = {}): number[] {
    const ids = this.hf.encode(text, { add_special_tokens: false }).ids;
    const bos = opts.bos ?? this.addBos;
    return bos && this.bosId !== null && ids[0] !== this.bosId ? [this.bosId, ...ids] : ids;
  }

  decode(ids: number[], opts: { skipSpecial?: boolean } = {}): string {
    return this.hf.decode(ids, { skip_special_tokens: opts.skipSpecial ?? true, clean_up_tokenization_spaces: false });
  }

  tokenText(id: number): string | undefined { return this.hf.id_to_token(id); }

  /** The prompt text for a conversation, through the model's chat template. */
  applyChatTemplate(messages: ChatMessage[], addGenerationPrompt = true): string {
    if (!this.chatTemplate) {
      // No template shipped: a plain transcript the user can still read and the model can continue.
      return messages.map((m) => `${m.role}: ${m.content}`).join('\n') + (addGenerationPrompt ? '\nassistant:' : '');
    }
    this.template ??= new Template(this.chatTemplate);
    const tok = (id: number | null) => (id === null ? '' : this.hf.id_to_token(id) ?? '');
    return this.template.render({
      messages, add_generation_prompt: addGenerationPrompt,
      bos_token: tok(this.bosId), eos_token: tok(this.eosIds[0] ?? null),
    });
  }
}

/** Turns a growing list of generated ids into text pieces, holding back incomplete UTF-8 sequences. */
export class StreamDecoder {
  private ids: number[] = [];
  private emitted = 0;
  constructor(private readonly tok: TextTokenizer) {}
  push(id: number): string {
    this.ids.push(id);
    const text = this.tok.decode(this.ids);
    if (text.endsWith('\uFFFD')) return ''; // wait for the rest of the character
    const piece = text.slice(this.emitted);
    this.emitted = text.length;
    return piece;
  }
  flush(): string {
    const text = this.tok.decode(this.ids);
    const piece = text.slice(this.emitted);
    this.emitted = text.length;
    return piece;
  }
}
