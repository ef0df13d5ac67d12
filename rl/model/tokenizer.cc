#include "rl/model/tokenizer.h"

namespace mobula::rl {

CharTokenizer::CharTokenizer(std::string alphabet) : alphabet_(std::move(alphabet)) {
  for (int& i : index_) i = -1;
  for (size_t i = 0; i < alphabet_.size(); ++i) {
    const auto c = static_cast<unsigned char>(alphabet_[i]);
    if (index_[c] < 0) index_[c] = 3 + static_cast<int>(i);
  }
}

Result<std::vector<int>> CharTokenizer::encode(std::string_view text) const {
  std::vector<int> out;
  out.reserve(text.size());
  for (size_t i = 0; i < text.size(); ++i) {
    const int id = index_[static_cast<unsigned char>(text[i])];
    if (id < 0)
      return Status::invalid_argument("tokenizer: character '" + std::string(1, text[i]) + "' at offset " +
                                      std::to_string(i) + " is not in the alphabet \"" + alphabet_ + "\"");
    out.push_back(id);
  }
  return out;
}

std::string CharTokenizer::decode(const std::vector<int>& ids) const {
  std::string s;
  for (int id : ids) {
    if (id < 3) continue;
    const int k = id - 3;
    s += k < static_cast<int>(alphabet_.size()) ? alphabet_[static_cast<size_t>(k)] : '?';
  }
  return s;
}

}  // namespace mobula::rl
