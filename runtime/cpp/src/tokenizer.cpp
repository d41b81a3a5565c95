// A reader of HF `tokenizers` tokenizer.json files for the BPE tokenizers our builds ship (byte-level BPE as
// in GPT-2 / SmolLM2 / Llama-3 / Qwen2, and Metaspace BPE), giving the ids HF `tokenizers` gives.
//
// Steps, each as `tokenizers` does it: added tokens are split out first (leftmost-longest match, on the raw
// text for tokens with normalized=false, after normalization for the others); each remaining piece is
// normalized (NFC / NFKC via utf8proc, Prepend, Replace), pre-tokenized (ByteLevel, Metaspace, Split, Digits
// with their regexes through PCRE2 in UTF + Unicode-property mode) and cut by BPE (merges by rank, lowest
// first, ties leftmost). A part we do not implement is refused at load time with its name, never ignored.
#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>
#include <utf8proc.h>

#include <algorithm>
#include <functional>
#include <nlohmann/json.hpp>
#include <queue>
#include <unordered_map>

#include "internal.hpp"

namespace lidit_impl {

using json = nlohmann::json;

namespace {

[[noreturn]] void unsupported(const std::string& path, const std::string& what) {
  fail(LIDIT_UNSUPPORTED, "tokenizer " + path + " uses " + what +
                              ", which liblidit does not implement; run this build with the Python runtime "
                              "(lidit-runtime generate) or report the tokenizer");
}

// One UTF-8 character's byte length at s[i] (the text is validated before).
size_t char_len(const std::string& s, size_t i) {
  unsigned char c = static_cast<unsigned char>(s[i]);
  return c < 0x80 ? 1 : c < 0xE0 ? 2 : c < 0xF0 ? 3 : 4;
}

struct Regex {
  pcre2_code* code = nullptr;
  explicit Regex(const std::string& pattern, const std::string& path) {
    int err = 0;
    PCRE2_SIZE off = 0;
    code = pcre2_compile(reinterpret_cast<PCRE2_SPTR>(pattern.data()), pattern.size(), PCRE2_UTF | PCRE2_UCP, &err,
                         &off, nullptr);
    if (!code) {
      PCRE2_UCHAR buf[256];
      pcre2_get_error_message(err, buf, sizeof buf);
      unsupported(path, "a regex PCRE2 cannot compile (" + std::string(reinterpret_cast<char*>(buf)) + ")");
    }
    pcre2_jit_compile(code, PCRE2_JIT_COMPLETE);  // optional speed-up; the interpreter is used if it fails
  }
  ~Regex() { pcre2_code_free(code); }
  Regex(const Regex&) = delete;
  Regex& operator=(const Regex&) = delete;
  // Non-overlapping matches (begin, end) in byte offsets, as an iterator over the text would give them.
  std::vector<std::pair<size_t, size_t>> find_all(const std::string& text) const {
    std::vector<std::pair<size_t, size_t>> out;
    pcre2_match_data* md = pcre2_match_data_create_from_pattern(code, nullptr);
    size_t pos = 0;
    while (pos <= text.size()) {
      int rc = pcre2_match(code, reinterpret_cast<PCRE2_SPTR>(text.data()), text.size(), pos, PCRE2_NO_UTF_CHECK,
                           md, nullptr);
      if (rc < 0) break;
      PCRE2_SIZE* ov = pcre2_get_ovector_pointer(md);
      size_t b = ov[0], e = ov[1];
      if (e == b) {  // empty match: skip one character (tokenizers ignores empty matches)
        if (b >= text.size()) break;
        pos = b + char_len(text, b);
        continue;
      }
      out.emplace_back(b, e);
      pos = e;
    }
    pcre2_match_data_free(md);
    return out;
  }
};

// GPT-2's byte -> printable character table (tokenizers' bytes_char), as UTF-8 strings.
std::array<std::string, 256> byte_chars() {
  std::array<std::string, 256> table;
  std::vector<int> direct;
  for (int b = '!'; b <= '~'; ++b) direct.push_back(b);
  for (int b = 0xA1; b <= 0xAC; ++b) direct.push_back(b);
  for (int b = 0xAE; b <= 0xFF; ++b) direct.push_back(b);
  int n = 0;
  for (int b = 0; b < 256; ++b) {
    int cp = std::find(direct.begin(), direct.end(), b) != direct.end() ? b : 256 + n++;
    utf8proc_uint8_t buf[4];
    auto len = utf8proc_encode_char(cp, buf);
    table[b] = std::string(reinterpret_cast<char*>(buf), len);
  }
  return table;
}

enum class Behavior { Removed, Isolated, MergedWithPrevious, MergedWithNext, Contiguous };

// Split `text` by matches (b, e) with a behavior, as tokenizers' NormalizedString::split does.
std::vector<std::string> split_by(const std::string& text, const std::vector<std::pair<size_t, size_t>>& matches,
                                  Behavior behavior) {
  // (begin, end, is_match) covering the text
  std::vector<std::tuple<size_t, size_t, bool>> parts;
  size_t last = 0;
  for (auto [b, e] : matches) {
    if (b > last) parts.emplace_back(last, b, false);
    parts.emplace_back(b, e, true);
    last = e;
  }
  if (last < text.size()) parts.emplace_back(last, text.size(), false);
  std::vector<std::pair<size_t, size_t>> spans;
  switch (behavior) {
    case Behavior::Removed:
      for (auto [b, e, m] : parts)
        if (!m) spans.emplace_back(b, e);
      break;
    case Behavior::Isolated:
      for (auto [b, e, m] : parts) spans.emplace_back(b, e);
      break;
    case Behavior::Contiguous: {
      bool prev_match = false;
      for (auto [b, e, m] : parts) {
        if (!spans.empty() && m && prev_match)
          spans.back().second = e;
        else
          spans.emplace_back(b, e);
        prev_match = m;
      }
      break;
    }
    case Behavior::MergedWithPrevious: {
      bool prev_match = false;
      for (auto [b, e, m] : parts) {
        if (m && !spans.empty() && !prev_match)
          spans.back().second = e;
        else
          spans.emplace_back(b, e);
        prev_match = m;
      }
      break;
    }
    case Behavior::MergedWithNext: {
      bool prev_match = false;
      for (auto [b, e, m] : parts) {
        if (!m && !spans.empty() && prev_match)
          spans.back().second = e;
        else
          spans.emplace_back(b, e);
        prev_match = m;
      }
      break;
    }
  }
  std::vector<std::string> out;
  for (auto [b, e] : spans)
    if (e > b) out.push_back(text.substr(b, e - b));
  return out;
}

Behavior parse_behavior(const std::string& s, const std::string& path) {
  if (s == "Removed") return Behavior::Removed;
  if (s == "Isolated") return Behavior::Isolated;
  if (s == "MergedWithPrevious") return Behavior::MergedWithPrevious;
  if (s == "MergedWithNext") return Behavior::MergedWithNext;
  if (s == "Contiguous") return Behavior::Contiguous;
  unsupported(path, "split behavior " + s);
}

std::string escape_regex(const std::string& s) {
  std::string out = "\\Q";
  for (size_t i = 0; i < s.size(); ++i) {
    if (s.compare(i, 2, "\\E") == 0) {
      out += "\\E\\\\E\\Q";
      ++i;
    } else {
      out += s[i];
    }
  }
  return out + "\\E";
}

std::string replace_all(std::string s, const std::string& from, const std::string& to) {
  if (from.empty()) return s;
  std::string out;
  size_t pos = 0, hit;
  while ((hit = s.find(from, pos)) != std::string::npos) {
    out += s.substr(pos, hit - pos) + to;
    pos = hit + from.size();
  }
  return out + s.substr(pos);
}

const std::string kGpt2Pattern =
    "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+";

}  // namespace

class BpeTokenizer {
 public:
  using Normalizer = std::function<std::string(const std::string&)>;
  using PreTokenizer = std::function<std::vector<std::string>(const std::vector<std::string>&)>;

  struct Added {
    std::string content;
    int64_t id;
    bool normalized, lstrip, rstrip;
  };

  std::string path;
  std::unordered_map<std::string, int64_t> vocab;
  std::unordered_map<uint64_t, std::pair<int, int64_t>> merges;  // (left id, right id) -> (rank, new id)
  std::optional<int64_t> unk;
  bool fuse_unk = false, ignore_merges = false, byte_fallback = false;
  std::vector<Added> added;
  std::vector<Normalizer> normalizers;
  std::vector<PreTokenizer> pre_tokenizers;
  std::vector<std::shared_ptr<Regex>> regexes;  // kept alive for the pre-tokenizers
  std::vector<int64_t> special_before, special_after;  // the post-processor's single-sequence template

  std::string normalize(const std::string& s) const {
    std::string out = s;
    for (auto& n : normalizers) out = n(out);
    return out;
  }

  // Added tokens split out of `text`: (piece, id or -1 for ordinary text). `normalized_pass`: match the
  // tokens whose normalized flag is that value.
  std::vector<std::pair<std::string, int64_t>> split_added(const std::string& text, bool normalized_pass) const {
    std::vector<std::pair<std::string, int64_t>> out;
    size_t start = 0, i = 0;
    while (i < text.size()) {
      const Added* best = nullptr;
      for (auto& a : added)
        if (a.normalized == normalized_pass && !a.content.empty() && text.compare(i, a.content.size(), a.content) == 0 &&
            (!best || a.content.size() > best->content.size()))
          best = &a;
      if (!best) {
        i += char_len(text, i);
        continue;
      }
      size_t b = i, e = i + best->content.size();
      if (best->lstrip)
        while (b > start && std::isspace(static_cast<unsigned char>(text[b - 1]))) --b;
      if (best->rstrip)
        while (e < text.size() && std::isspace(static_cast<unsigned char>(text[e]))) ++e;
      if (b > start) out.emplace_back(text.substr(start, b - start), -1);
      out.emplace_back(text.substr(b, e - b), best->id);
      start = i = e;
    }
    if (start < text.size()) out.emplace_back(text.substr(start), -1);
    return out;
  }

  int64_t id_of(const std::string& token) const {
    auto it = vocab.find(token);
    return it == vocab.end() ? -1 : it->second;
  }

  void bpe(const std::string& word, std::vector<int64_t>& out) const {
    if (ignore_merges) {
      int64_t id = id_of(word);
      if (id >= 0) {
        out.push_back(id);
        return;
      }
    }
    struct Symbol {
      int64_t id;
      int prev, next;
      bool alive;
    };
    std::vector<Symbol> symbols;
    for (size_t i = 0; i < word.size();) {
      size_t n = char_len(word, i);
      int64_t id = id_of(word.substr(i, n));
      if (id >= 0) {
        symbols.push_back({id, int(symbols.size()) - 1, int(symbols.size()) + 1, true});
      } else if (byte_fallback) {
        std::vector<int64_t> bytes;
        for (size_t j = i; j < i + n; ++j) {
          char buf[8];
          std::snprintf(buf, sizeof buf, "<0x%02X>", static_cast<unsigned char>(word[j]));
          bytes.push_back(id_of(buf));
        }
        if (std::find(bytes.begin(), bytes.end(), -1) == bytes.end()) {
          for (auto b : bytes) symbols.push_back({b, int(symbols.size()) - 1, int(symbols.size()) + 1, true});
        } else if (unk) {
          symbols.push_back({*unk, int(symbols.size()) - 1, int(symbols.size()) + 1, true});
        }
      } else if (unk) {
        if (fuse_unk && !symbols.empty() && symbols.back().id == *unk) {
          // consecutive unknown characters become one unk token
        } else {
          symbols.push_back({*unk, int(symbols.size()) - 1, int(symbols.size()) + 1, true});
        }
      }  // no unk token: the character is dropped, as tokenizers does
      i += n;
    }
    if (!symbols.empty()) symbols.back().next = -1;
    // (rank, position, new id): lowest rank first, then leftmost
    using Entry = std::tuple<int, int, int64_t>;
    std::priority_queue<Entry, std::vector<Entry>, std::greater<Entry>> heap;
    auto push = [&](int pos) {
      int nx = symbols[pos].next;
      if (nx < 0) return;
      auto it = merges.find(key(symbols[pos].id, symbols[nx].id));
      if (it != merges.end()) heap.emplace(it->second.first, pos, it->second.second);
    };
    for (int i = 0; i + 1 < int(symbols.size()); ++i) push(i);
    while (!heap.empty()) {
      auto [rank, pos, new_id] = heap.top();
      heap.pop();
      Symbol& left = symbols[pos];
      if (!left.alive || left.next < 0) continue;
      Symbol& right = symbols[left.next];
      auto it = merges.find(key(left.id, right.id));
      if (it == merges.end() || it->second != std::make_pair(rank, new_id)) continue;
      left.id = new_id;
      right.alive = false;
      left.next = right.next;
      if (right.next >= 0) symbols[right.next].prev = pos;
      if (left.prev >= 0) push(left.prev);
      push(pos);
    }
    for (auto& s : symbols)
      if (s.alive) out.push_back(s.id);
  }

  static uint64_t key(int64_t a, int64_t b) { return (uint64_t(uint32_t(a)) << 32) | uint32_t(b); }

  std::vector<int64_t> encode(const std::string& text) const {
    std::vector<int64_t> ids;
    for (auto& [raw, raw_id] : split_added(text, false)) {
      if (raw_id >= 0) {
        ids.push_back(raw_id);
        continue;
      }
      for (auto& [piece, id] : split_added(normalize(raw), true)) {
        if (id >= 0) {
          ids.push_back(id);
          continue;
        }
        std::vector<std::string> words = {piece};
        for (auto& p : pre_tokenizers) words = p(words);
        for (auto& w : words) bpe(w, ids);
      }
    }
    return ids;
  }
};

namespace {

void add_normalizer(BpeTokenizer& t, const json& n) {
  if (n.is_null()) return;
  std::string type = n.value("type", "");
  if (type == "Sequence") {
    for (auto& s : n.at("normalizers")) add_normalizer(t, s);
  } else if (type == "NFC" || type == "NFKC") {
    bool nfkc = type == "NFKC";
    t.normalizers.push_back([nfkc](const std::string& s) {
      utf8proc_uint8_t* out = nfkc ? utf8proc_NFKC(reinterpret_cast<const utf8proc_uint8_t*>(s.c_str()))
                                   : utf8proc_NFC(reinterpret_cast<const utf8proc_uint8_t*>(s.c_str()));
      if (!out) throw std::bad_alloc();
      std::string r(reinterpret_cast<char*>(out));
      std::free(out);
      return r;
    });
  } else if (type == "Prepend") {
    std::string p = n.at("prepend");
    t.normalizers.push_back([p](const std::string& s) { return s.empty() ? s : p + s; });
  } else if (type == "Replace" && n.at("pattern").contains("String")) {
    std::string from = n.at("pattern").at("String"), to = n.at("content");
    t.normalizers.push_back([from, to](const std::string& s) { return replace_all(s, from, to); });
  } else {
    unsupported(t.path, "normalizer " + n.dump().substr(0, 80));
  }
}

void add_pre_tokenizer(BpeTokenizer& t, const json& p) {
  if (p.is_null()) return;
  std::string type = p.value("type", "");
  if (type == "Sequence") {
    for (auto& s : p.at("pretokenizers")) add_pre_tokenizer(t, s);
  } else if (type == "ByteLevel") {
    bool prefix = p.value("add_prefix_space", false), use_regex = p.value("use_regex", true);
    std::shared_ptr<Regex> re = use_regex ? std::make_shared<Regex>(kGpt2Pattern, t.path) : nullptr;
    t.regexes.push_back(re);
    auto table = std::make_shared<std::array<std::string, 256>>(byte_chars());
    t.pre_tokenizers.push_back([prefix, re, table](const std::vector<std::string>& words) {
      std::vector<std::string> out;
      for (auto w : words) {
        if (prefix && (w.empty() || w[0] != ' ')) w = " " + w;
        std::vector<std::string> pieces = re ? split_by(w, re->find_all(w), Behavior::Isolated)
                                             : std::vector<std::string>{w};
        for (auto& piece : pieces) {
          std::string mapped;
          for (unsigned char c : piece) mapped += (*table)[c];
          out.push_back(mapped);
        }
      }
      return out;
    });
  } else if (type == "Metaspace") {
    std::string rep = p.value("replacement", "\xE2\x96\x81");
    std::string scheme = p.value("prepend_scheme", "always");
    bool split = p.value("split", true);
    if (scheme != "always" && scheme != "never" && scheme != "first") unsupported(t.path, "Metaspace " + scheme);
    // Each piece between added tokens is pre-tokenized alone; "first" prepends only to the text's first piece,
    // which this reader cannot tell apart: refused rather than guessed.
    if (scheme == "first") unsupported(t.path, "Metaspace prepend_scheme \"first\"");
    t.pre_tokenizers.push_back([rep, scheme, split](const std::vector<std::string>& words) {
      std::vector<std::string> out;
      for (auto& word : words) {
        std::string w = replace_all(word, " ", rep);
        if (scheme == "always" && w.compare(0, rep.size(), rep) != 0) w = rep + w;
        if (!split) {
          out.push_back(w);
          continue;
        }
        std::vector<std::pair<size_t, size_t>> hits;
        for (size_t pos = 0; (pos = w.find(rep, pos)) != std::string::npos; pos += rep.size())
          hits.emplace_back(pos, pos + rep.size());
        for (auto& s : split_by(w, hits, Behavior::MergedWithNext)) out.push_back(s);
      }
      return out;
    });
  } else if (type == "Split") {
    const json& pat = p.at("pattern");
    std::string regex = pat.contains("Regex") ? pat.at("Regex").get<std::string>()
                                              : escape_regex(pat.at("String").get<std::string>());
    if (p.value("invert", false)) unsupported(t.path, "an inverted Split");
    auto re = std::make_shared<Regex>(regex, t.path);
    t.regexes.push_back(re);
    Behavior b = parse_behavior(p.at("behavior"), t.path);
    t.pre_tokenizers.push_back([re, b](const std::vector<std::string>& words) {
      std::vector<std::string> out;
      for (auto& w : words)
        for (auto& s : split_by(w, re->find_all(w), b)) out.push_back(s);
      return out;
    });
  } else if (type == "Digits") {
    bool individual = p.value("individual_digits", false);
    auto re = std::make_shared<Regex>(individual ? "\\p{N}" : "\\p{N}+", t.path);
    t.regexes.push_back(re);
    t.pre_tokenizers.push_back([re](const std::vector<std::string>& words) {
      std::vector<std::string> out;
      for (auto& w : words)
        for (auto& s : split_by(w, re->find_all(w), Behavior::Isolated)) out.push_back(s);
      return out;
    });
  } else {
    unsupported(t.path, "pre-tokenizer " + type);
  }
}

void add_post_processor(BpeTokenizer& t, const json& p) {
  if (p.is_null()) return;
  std::string type = p.value("type", "");
  if (type == "Sequence") {
    for (auto& s : p.at("processors")) add_post_processor(t, s);
  } else if (type == "ByteLevel") {
    // offsets only; ids unchanged
  } else if (type == "TemplateProcessing") {
    bool seen_a = false;
    for (auto& piece : p.at("single")) {
      if (piece.contains("Sequence")) {
        seen_a = true;
      } else if (piece.contains("SpecialToken")) {
        std::string name = piece.at("SpecialToken").at("id");
        auto& ids = p.at("special_tokens").at(name).at("ids");
        for (auto& id : ids) (seen_a ? t.special_after : t.special_before).push_back(id.get<int64_t>());
      } else {
        unsupported(t.path, "a TemplateProcessing piece " + piece.dump().substr(0, 60));
      }
    }
  } else {
    unsupported(t.path, "post-processor " + type);
  }
}

}  // namespace

std::shared_ptr<BpeTokenizer> load_tokenizer(const std::string& path) {
  std::string text = read_file(path, size_t(256) << 20, "tokenizer");
  auto t = std::make_shared<BpeTokenizer>();
  t->path = path;
  try {
    json j = json::parse(text);
    const json& m = j.at("model");
    if (m.value("type", "") != "BPE") unsupported(path, "model type " + m.value("type", std::string("?")));
    if (!m.value("dropout", json()).is_null()) unsupported(path, "BPE dropout");
    for (const char* k : {"continuing_subword_prefix", "end_of_word_suffix"})
      if (m.contains(k) && m[k].is_string() && !m[k].get<std::string>().empty())
        unsupported(path, std::string("BPE ") + k);
    for (auto& [token, id] : m.at("vocab").items()) t->vocab[token] = id.get<int64_t>();
    int rank = 0;
    for (auto& merge : m.at("merges")) {
      std::string a, b;
      if (merge.is_array()) {
        a = merge.at(0);
        b = merge.at(1);
      } else {
        std::string s = merge;
        size_t sp = s.find(' ', 1);
        if (sp == std::string::npos) fail(LIDIT_CORRUPT_ARTIFACT, "tokenizer " + path + ": merge '" + s + "' has no space");
        a = s.substr(0, sp);
        b = s.substr(sp + 1);
      }
      int64_t ia = t->id_of(a), ib = t->id_of(b), inew = t->id_of(a + b);
      if (ia < 0 || ib < 0 || inew < 0)
        fail(LIDIT_CORRUPT_ARTIFACT, "tokenizer " + path + ": merge '" + a + " " + b + "' names tokens not in the vocab");
      t->merges.emplace(BpeTokenizer::key(ia, ib), std::make_pair(rank++, inew));
    }
    if (m.contains("unk_token") && m["unk_token"].is_string()) {
      int64_t id = t->id_of(m["unk_token"]);
      if (id >= 0) t->unk = id;
    }
    t->fuse_unk = m.value("fuse_unk", false);
    t->ignore_merges = m.value("ignore_merges", false);
    t->byte_fallback = m.value("byte_fallback", false);
    for (auto& a : j.value("added_tokens", json::array())) {
      if (a.value("single_word", false)) unsupported(path, "an added token with single_word");
      t->added.push_back({a.at("content"), a.at("id"), a.value("normalized", false), a.value("lstrip", false),
                          a.value("rstrip", false)});
    }
    add_normalizer(*t, j.value("normalizer", json()));
    add_pre_tokenizer(*t, j.value("pre_tokenizer", json()));
    add_post_processor(*t, j.value("post_processor", json()));
  } catch (const json::exception& e) {
    fail(LIDIT_CORRUPT_ARTIFACT, "tokenizer " + path + " is not a tokenizer.json (" + std::string(e.what()).substr(0, 120) +
                                     "); restore it or rebuild with `lidit-export build`");
  }
  return t;
}

std::vector<int64_t> tokenize(const BpeTokenizer& tok, const std::string& text, bool special, int truncate_to) {
  std::vector<int64_t> ids = tok.encode(text);
  if (!special) return ids;
  if (truncate_to > 0) {
    size_t room = size_t(std::max<int64_t>(0, int64_t(truncate_to) -
                                                  int64_t(tok.special_before.size() + tok.special_after.size())));
    if (ids.size() > room) ids.resize(room);
  }
  std::vector<int64_t> out = tok.special_before;
  out.insert(out.end(), ids.begin(), ids.end());
  out.insert(out.end(), tok.special_after.begin(), tok.special_after.end());
  return out;
}

PromptTokenizer::PromptTokenizer(std::shared_ptr<BpeTokenizer> t, const EncoderRecord& r) : tok(std::move(t)), rec(r) {
  if (!rec.whole_text) {
    prefix_ids = rec.prefix_text.empty() ? std::vector<int64_t>{} : tokenize(*tok, rec.prefix_text, false);
    suffix_ids = rec.suffix_text.empty() ? std::vector<int64_t>{} : tokenize(*tok, rec.suffix_text, false);
  }
  if (rec.prefix_cached && int(prefix_ids.size()) != rec.prefix_length)
    fail(LIDIT_CORRUPT_ARTIFACT, "tokenizer " + tok->path + " gives " + std::to_string(prefix_ids.size()) +
                                     " prefix tokens, the encoder graph was exported for " +
                                     std::to_string(rec.prefix_length) + ": it is not the tokenizer of this build; rebuild");
  caption_room = rec.max_length - int(prefix_ids.size()) - int(suffix_ids.size());
  if (caption_room < 1)
    fail(LIDIT_CORRUPT_ARTIFACT, "encoder max_length " + std::to_string(rec.max_length) +
                                     " leaves no room for a caption after the prefix and suffix; rebuild");
}

std::vector<int64_t> PromptTokenizer::row(const std::string& caption, bool negative) const {
  if (rec.whole_text) {
    const std::string& prefix = negative && rec.negative_prefix_text ? *rec.negative_prefix_text : rec.prefix_text;
    std::string text = prefix + caption + rec.suffix_text;
    auto ids = tokenize(*tok, text, true);
    if (int(ids.size()) > rec.max_length) ids = tokenize(*tok, text, true, rec.max_length);
    return ids;
  }
  std::vector<int64_t> ids = caption.empty() ? std::vector<int64_t>{} : tokenize(*tok, rec.caption_separator + caption, false);
  if (int(ids.size()) > caption_room) ids.resize(caption_room);
  std::vector<int64_t> out = prefix_ids;
  out.insert(out.end(), ids.begin(), ids.end());
  out.insert(out.end(), suffix_ids.begin(), suffix_ids.end());
  return out;
}

}  // namespace lidit_impl
