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

  /** `where`: the model file or folder the vocabulary came from (named in errors). */
  constructor(spec: TokenizerSpec, where = 'the model') {
    try {
      this.hf = new HFTokenizer(spec.json, spec.config);
    } catch (e) {
      throw new Error(`${where}: cannot build the tokenizer from its vocabulary (damaged or unsupported): ${(e as Error).message}`);
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
    if (ids.length === 0) return '';
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

/** Turns generated ids into text pieces as they come, holding back incomplete UTF-8 sequences. Each step
 *  decodes only a few tokens of context plus the new ones (constant work per token), and takes the text
 *  the new ones add, so decoders that treat the first token specially (SentencePiece's leading space) agree. */
export class StreamDecoder {
  private context: number[] = [];
  private pending: number[] = [];
  constructor(private readonly tok: TextTokenizer, private readonly contextTokens = 4) {}
  push(id: number): string {
    this.pending.push(id);
    const base = this.tok.decode(this.context);
    const text = this.tok.decode([...this.context, ...this.pending]);
    if (text.endsWith('\uFFFD') && this.pending.length < 8) return ''; // wait for the rest of the character
    const piece = text.startsWith(base) ? text.slice(base.length) : text;
    this.context = [...this.context, ...this.pending].slice(-this.contextTokens);
    this.pending = [];
    return piece;
  }
  flush(): string {
    if (!this.pending.length) return '';
    const base = this.tok.decode(this.context), text = this.tok.decode([...this.context, ...this.pending]);
    this.pending = [];
    return text.startsWith(base) ? text.slice(base.length) : text;
  }
}
