// Tokenizers. The RL tasks need only characters; the interface is what a BPE vocabulary would
// implement later. Special tokens come first: <pad> = 0, <bos> = 1, <eos> = 2.
#pragma once

#include <string>
#include <string_view>
#include <vector>

#include "core/runtime/status.h"

namespace mobula::rl {

class Tokenizer {
 public:
  virtual ~Tokenizer() = default;
  virtual int vocab_size() const = 0;
  virtual int pad() const { return 0; }
  virtual int bos() const { return 1; }
  virtual int eos() const { return 2; }
  // Text -> ids; characters outside the vocabulary are an error naming the character and offset.
  virtual Result<std::vector<int>> encode(std::string_view text) const = 0;
  // Ids -> text; special tokens are dropped, unknown ids become '?'.
  virtual std::string decode(const std::vector<int>& ids) const = 0;
};

// One id per character of `alphabet` (ASCII), after the three special tokens.
class CharTokenizer final : public Tokenizer {
 public:
  explicit CharTokenizer(std::string alphabet);
  int vocab_size() const override { return 3 + static_cast<int>(alphabet_.size()); }
  Result<std::vector<int>> encode(std::string_view text) const override;
  std::string decode(const std::vector<int>& ids) const override;
  const std::string& alphabet() const { return alphabet_; }

 private:
  std::string alphabet_;
  int index_[256];
};

}  // namespace mobula::rl
