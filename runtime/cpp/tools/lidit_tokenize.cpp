// The tokenizer alone, for the token-parity tests against HF tokenizers. Reads JSON strings, one per line, and
// prints each one's ids as a JSON list.
//   lidit-tokenize TOKENIZER_JSON [--special] [--truncate N]   tokenizer.json's own encode
//   lidit-tokenize --build DIR --encoder I [--negative]         the build's prompt rows (template + truncation)
#include <iostream>
#include <nlohmann/json.hpp>
#include <string>

#include "internal.hpp"

int main(int argc, char** argv) {
  if (argc < 2) {
    std::cerr << "usage: lidit-tokenize TOKENIZER_JSON [--special] [--truncate N] | --build DIR --encoder I [--negative]\n";
    return 2;
  }
  bool special = false, negative = false;
  int truncate = 0, encoder = 0;
  std::string build;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    if (a == "--special") special = true;
    else if (a == "--negative") negative = true;
    else if (a == "--truncate" && i + 1 < argc) truncate = std::stoi(argv[++i]);
    else if (a == "--encoder" && i + 1 < argc) encoder = std::stoi(argv[++i]);
    else if (a == "--build" && i + 1 < argc) build = argv[++i];
  }
  try {
    std::unique_ptr<lidit_impl::PromptTokenizer> rows;
    std::shared_ptr<lidit_impl::BpeTokenizer> tok;
    if (!build.empty()) {
      auto m = lidit_impl::load_manifest(build, false);
      auto& rec = m.encoders.at(size_t(encoder));
      auto file = lidit_impl::build_file(build, rec.tokenizer_file, "tokenizer");
      rows = std::make_unique<lidit_impl::PromptTokenizer>(lidit_impl::load_tokenizer(file), rec);
    } else {
      tok = lidit_impl::load_tokenizer(argv[1]);
    }
    std::string line;
    while (std::getline(std::cin, line)) {
      std::string text = nlohmann::json::parse(line).get<std::string>();
      auto ids = rows ? rows->row(text, negative) : lidit_impl::tokenize(*tok, text, special, truncate);
      std::cout << nlohmann::json(ids).dump() << "\n";
    }
  } catch (const std::exception& e) {
    std::cerr << "error: " << e.what() << "\n";
    return 1;
  }
  return 0;
}
