// Images (io/images.h): PNG/JPEG codecs, the procedural generator, image shards on disk and the
// dataset over them. Corrupt inputs must come back as one-line errors naming what is wrong, never
// a crash. Also prints (does not assert) PNG/JPEG decode and shard read rates.
#include "io/image_shards.h"
#include "io/synthetic_images.h"

#include <gtest/gtest.h>

#include <iterator>

#include <hdf5.h>
#include <unistd.h>
#include <thread>

#include <array>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <functional>
#include <numeric>

namespace mobula::io {
namespace {

namespace fs = std::filesystem;

fs::path scratch_dir() {
  return fs::path(testing::TempDir()) / ("mobula_images_" + std::to_string(getpid()));
}

std::string scratch(const std::string& name) {
  fs::create_directories(scratch_dir());
  const fs::path p = scratch_dir() / name;
  fs::remove_all(p);
  return p.string();
}

// The scratch directory is removed when every test passed (kept for a look otherwise).
class RemoveScratch : public testing::Environment {
 public:
  void TearDown() override {
    std::error_code ec;
    if (testing::UnitTest::GetInstance()->Passed()) fs::remove_all(scratch_dir(), ec);
  }
};
[[maybe_unused]] testing::Environment* const kRemoveScratch = testing::AddGlobalTestEnvironment(new RemoveScratch);

bool contains(const std::string& s, const std::string& part) {
  return s.find(part) != std::string::npos;
}

Image noise_image(int w, int h, int c, uint32_t seed) {
  Image im{w, h, c, std::vector<uint8_t>(size_t(w) * size_t(h) * size_t(c))};
  uint32_t x = seed * 2654435761u + 1;
  for (auto& p : im.pixels) {
    x ^= x << 13;
    x ^= x >> 17;
    x ^= x << 5;
    p = static_cast<uint8_t>(x >> 24);
  }
  return im;
}

double mean_abs_error(const Image& a, const Image& b) {
  double e = 0;
  for (size_t i = 0; i < a.pixels.size(); ++i) e += std::abs(int(a.pixels[i]) - int(b.pixels[i]));
  return e / static_cast<double>(a.pixels.size());
}

std::vector<uint8_t> png_of(const Image& im) {
  auto r = encode_png(im);
  EXPECT_TRUE(r.is_ok()) << r.status().message();
  return r.is_ok() ? *r : std::vector<uint8_t>{};
}

double seconds_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

// ---- codecs ----------------------------------------------------------------------------------

TEST(Images, PngRoundTripIsExact) {
  for (int c = 1; c <= 4; ++c) {
    const Image im = noise_image(37, 23, c, uint32_t(c));
    const auto bytes = png_of(im);
    auto back = decode_png(bytes);
    ASSERT_TRUE(back.is_ok()) << back.status().message();
    EXPECT_EQ(back->width, 37);
    EXPECT_EQ(back->height, 23);
    EXPECT_EQ(back->channels, c);
    EXPECT_EQ(back->pixels, im.pixels) << "channels " << c;
    auto sniffed = decode_image(bytes);
    ASSERT_TRUE(sniffed.is_ok());
    EXPECT_EQ(sniffed->pixels, im.pixels);
    auto info = probe_image(bytes);
    ASSERT_TRUE(info.is_ok());
    EXPECT_EQ(info->encoding, "png");
    EXPECT_EQ(info->width, 37);
    EXPECT_EQ(info->channels, c);
  }
}

TEST(Images, JpegRoundTripIsClose) {
  int label = 0;
  const Image rgb = synth_image(1, 2, 64, &label);
  auto bytes = encode_jpeg(rgb, 90);
  ASSERT_TRUE(bytes.is_ok()) << bytes.status().message();
  auto back = decode_image(*bytes);
  ASSERT_TRUE(back.is_ok()) << back.status().message();
  ASSERT_EQ(back->channels, 3);
  ASSERT_EQ(back->width, 64);
  ASSERT_EQ(back->pixels.size(), rgb.pixels.size());
  const double mae = mean_abs_error(rgb, *back);
  std::printf("jpeg q90 64x64 RGB: %zu bytes, mean abs error %.2f\n", bytes->size(), mae);
  EXPECT_LT(mae, 6.0);

  Image gray{48, 40, 1, {}};
  for (int y = 0; y < 40; ++y)
    for (int x = 0; x < 48; ++x) gray.pixels.push_back(static_cast<uint8_t>(x * 5 + y * 2));
  auto gbytes = encode_jpeg(gray, 95);
  ASSERT_TRUE(gbytes.is_ok());
  auto gback = decode_jpeg(*gbytes);
  ASSERT_TRUE(gback.is_ok()) << gback.status().message();
  EXPECT_EQ(gback->channels, 1);
  EXPECT_LT(mean_abs_error(gray, *gback), 2.0);
  auto info = probe_image(*gbytes);
  ASSERT_TRUE(info.is_ok());
  EXPECT_EQ(info->encoding, "jpeg");
  EXPECT_EQ(info->width, 48);
  EXPECT_EQ(info->height, 40);
}

TEST(Images, EncodersRefuseBadImages) {
  Image bad{4, 4, 3, std::vector<uint8_t>(10)};
  EXPECT_TRUE(contains(encode_png(bad).status().message(), "10 pixel bytes"));
  EXPECT_FALSE(encode_jpeg(noise_image(4, 4, 4, 1), 90).is_ok());  // RGBA: not for JPEG
  EXPECT_FALSE(encode_jpeg(noise_image(4, 4, 3, 1), 0).is_ok());
  EXPECT_FALSE(encode_png(Image{0, 4, 1, {}}).is_ok());
}

TEST(Images, GarbageAndTruncationFailClearly) {
  const std::vector<uint8_t> empty;
  auto e = decode_image(empty);
  ASSERT_FALSE(e.is_ok());
  EXPECT_TRUE(contains(e.status().message(), "neither PNG nor JPEG")) << e.status().message();
  std::vector<uint8_t> garbage(1000);
  for (size_t i = 0; i < garbage.size(); ++i) garbage[i] = static_cast<uint8_t>(i * 7 + 3);
  auto g = decode_image(garbage);
  ASSERT_FALSE(g.is_ok());
  EXPECT_TRUE(contains(g.status().message(), "starts with 03 0a 11")) << g.status().message();
  EXPECT_TRUE(contains(decode_png(garbage).status().message(), "not a PNG"));
  EXPECT_FALSE(decode_jpeg(garbage).is_ok());

  // PNG: every prefix that cuts into the image data (anything before IEND) fails; none crashes. A
  // missing IEND alone is not detected by libpng: the pixels are complete by then.
  const auto png = png_of(synth_image(3, 4, 32, nullptr));
  const size_t png_iend = png.size() - 12;  // the IEND chunk is the last 12 bytes
  for (size_t n = 0; n < png.size(); ++n) {
    auto r = decode_png(std::span<const uint8_t>(png.data(), n));
    if (n < png_iend) {
      EXPECT_FALSE(r.is_ok()) << "PNG prefix of " << n << " of " << png.size() << " bytes";
    }
    if (!r.is_ok()) {
      EXPECT_TRUE(contains(r.status().message(), "png: ")) << r.status().message();
    }
  }
  auto half = decode_png(std::span<const uint8_t>(png.data(), png.size() / 2));
  ASSERT_FALSE(half.is_ok());
  std::printf("truncated PNG: %s\n", half.status().message().c_str());
  // A flipped byte inside IDAT is caught by the chunk CRC.
  auto flipped = png;
  flipped[png.size() / 2] ^= 0x55;
  EXPECT_FALSE(decode_png(flipped).is_ok());

  // JPEG: every strict prefix fails (libjpeg would only warn and pad with gray), none crashes.
  auto jpeg = encode_jpeg(synth_image(3, 4, 32, nullptr), 85);
  ASSERT_TRUE(jpeg.is_ok());
  for (size_t n = 0; n < jpeg->size(); ++n) {
    auto r = decode_jpeg(std::span<const uint8_t>(jpeg->data(), n));
    EXPECT_FALSE(r.is_ok()) << "JPEG prefix of " << n << " of " << jpeg->size() << " bytes";
    if (!r.is_ok()) {
      EXPECT_TRUE(contains(r.status().message(), "jpeg: ")) << r.status().message();
    }
  }
  auto jhalf = decode_image(std::span<const uint8_t>(jpeg->data(), jpeg->size() / 2));
  ASSERT_FALSE(jhalf.is_ok());
  std::printf("truncated JPEG: %s\n", jhalf.status().message().c_str());
  // Random damage after the header: may decode to garbage or fail, but never crashes.
  for (int k = 0; k < 50; ++k) {
    auto d = *jpeg;
    for (int j = 0; j < 8; ++j) d[200 + size_t((k * 131 + j * 17) % int(d.size() - 200))] ^= uint8_t(k * 37 + j + 1);
    (void)decode_jpeg(d);
  }
}

// ---- generator -------------------------------------------------------------------------------

TEST(Images, SynthIsDeterministicAndCoversAllClasses) {
  int l1 = -1, l2 = -1;
  const Image a = synth_image(42, 7, 64, &l1), b = synth_image(42, 7, 64, &l2);
  EXPECT_EQ(a.pixels, b.pixels);
  EXPECT_EQ(l1, l2);
  EXPECT_EQ(a.width, 64);
  EXPECT_EQ(a.channels, 3);
  EXPECT_NE(synth_image(42, 8, 64, nullptr).pixels, a.pixels);
  EXPECT_NE(synth_image(43, 7, 64, nullptr).pixels, a.pixels);
  std::array<int, kSynthClasses> seen{};
  for (uint64_t i = 0; i < 100; ++i) {
    int label = -1;
    (void)synth_image(5, i, 16, &label);
    ASSERT_GE(label, 0);
    ASSERT_LT(label, kSynthClasses);
    ++seen[size_t(label)];
  }
  for (int c = 0; c < kSynthClasses; ++c) EXPECT_GT(seen[size_t(c)], 10) << synth_class_name(c);
  std::printf("classes over 100 images: disc %d, square %d, triangle %d, ring %d\n", seen[0], seen[1], seen[2],
              seen[3]);
}

// ---- shards ----------------------------------------------------------------------------------

struct Samples {
  std::vector<std::vector<uint8_t>> encoded;
  std::vector<int32_t> labels;
};

Samples make_samples(uint64_t first, uint64_t n, int size = 24) {
  Samples s;
  for (uint64_t i = first; i < first + n; ++i) {
    int label = 0;
    s.encoded.push_back(png_of(synth_image(9, i, size, &label)));
    s.labels.push_back(label);
  }
  return s;
}

TEST(ImageShards, WriteReadRoundTrip) {
  const std::string path = scratch("rt.h5");
  const Samples s = make_samples(1000, 50);
  ASSERT_TRUE(write_shard(path, 1000, s.encoded, s.labels, "png", "test shard").is_ok());
  EXPECT_FALSE(fs::exists(fs::path(path).parent_path() / ".rt.h5.tmp"));
  auto r = ShardReader::open(path);
  ASSERT_TRUE(r.is_ok()) << r.status().message();
  EXPECT_EQ(r->count(), 50u);
  EXPECT_EQ(r->first_index(), 1000u);
  EXPECT_EQ(r->encoding(), "png");
  EXPECT_EQ(r->generator(), "test shard");
  for (uint64_t i = 0; i < 50; ++i) {
    auto bytes = r->read(i);
    ASSERT_TRUE(bytes.is_ok()) << bytes.status().message();
    EXPECT_EQ(*bytes, s.encoded[i]) << "sample " << i;
    EXPECT_EQ(r->label(i), s.labels[i]);
    EXPECT_EQ(r->width(i), 24);
    EXPECT_EQ(r->height(i), 24);
  }
  auto img = decode_image(*r->read(17));
  ASSERT_TRUE(img.is_ok());
  EXPECT_EQ(img->pixels, synth_image(9, 1017, 24, nullptr).pixels);
  auto out = r->read(50);
  ASSERT_FALSE(out.is_ok());
  EXPECT_TRUE(contains(out.status().message(), "out of range")) << out.status().message();
  EXPECT_EQ(r->label(50), -1);
}

// The same samples make the same bytes (no modification times in the file): outputs written again
// after a crash compare equal.
TEST(ImageShards, TheSameShardIsTheSameBytes) {
  const Samples s = make_samples(0, 12);
  const std::string a = scratch("same-a.h5"), b = scratch("same-b.h5");
  ASSERT_TRUE(write_shard(a, 0, s.encoded, s.labels, "png", "x").is_ok());
  std::this_thread::sleep_for(std::chrono::milliseconds(1100));  // a second apart: times would differ
  ASSERT_TRUE(write_shard(b, 0, s.encoded, s.labels, "png", "x").is_ok());
  auto bytes = [](const std::string& p) {
    std::ifstream in(p, std::ios::binary);
    return std::string(std::istreambuf_iterator<char>(in), {});
  };
  EXPECT_EQ(bytes(a), bytes(b));
}

TEST(ImageShards, WriterRefusesBadInput) {
  const std::string path = scratch("bad_input.h5");
  Samples s = make_samples(0, 3);
  auto st = write_shard(path, 0, s.encoded, {1, 2}, "png", "");
  EXPECT_TRUE(contains(st.message(), "3 images but 2 labels")) << st.message();
  st = write_shard(path, 0, s.encoded, s.labels, "jpeg", "");
  EXPECT_TRUE(contains(st.message(), "sample 0 is png but the shard's encoding is jpeg")) << st.message();
  s.encoded[1] = {1, 2, 3};
  st = write_shard(path, 0, s.encoded, s.labels, "png", "");
  EXPECT_TRUE(contains(st.message(), "sample 1: image: neither PNG nor JPEG")) << st.message();
  EXPECT_FALSE(write_shard(path, 0, {}, {}, "png", "").is_ok());
  EXPECT_FALSE(fs::exists(path));
}

// Edits a written shard with the HDF5 C API.
void edit_shard(const std::string& path, const std::function<void(hid_t)>& edit) {
  const hid_t f = H5Fopen(path.c_str(), H5F_ACC_RDWR, H5P_DEFAULT);
  ASSERT_GE(f, 0);
  edit(f);
  ASSERT_GE(H5Fclose(f), 0);
}

void set_fixed_string_attr(hid_t f, const char* name, const std::string& value) {
  if (H5Aexists(f, name) > 0) {
    ASSERT_GE(H5Adelete(f, name), 0);
  }
  const hid_t type = H5Tcopy(H5T_C_S1);
  ASSERT_GE(H5Tset_size(type, value.size()), 0);
  const hid_t space = H5Screate(H5S_SCALAR);
  const hid_t attr = H5Acreate2(f, name, type, space, H5P_DEFAULT, H5P_DEFAULT);
  ASSERT_GE(attr, 0);
  ASSERT_GE(H5Awrite(attr, type, value.data()), 0);
  H5Aclose(attr);
  H5Sclose(space);
  H5Tclose(type);
}

std::string open_error(const std::string& path) {
  auto r = ShardReader::open(path);
  EXPECT_FALSE(r.is_ok()) << path << " was accepted";
  const std::string m = r.is_ok() ? "" : r.status().message();
  std::printf("  refused: %s\n", m.c_str());
  EXPECT_EQ(m.rfind(path, 0), 0u) << "message does not start with the path: " << m;
  EXPECT_EQ(m.find('\n'), std::string::npos);
  return m;
}

TEST(ImageShards, CorruptShardsAreRefused) {
  const Samples s = make_samples(0, 5);
  auto fresh = [&](const std::string& name) {
    const std::string p = scratch(name);
    EXPECT_TRUE(write_shard(p, 0, s.encoded, s.labels, "png", "x").is_ok());
    return p;
  };
  // A fixed-length string with the right value is fine (other writers may use one).
  const std::string fixed = fresh("fixed_format.h5");
  edit_shard(fixed, [](hid_t f) { set_fixed_string_attr(f, "format", "mobula-image-shard"); });
  EXPECT_TRUE(ShardReader::open(fixed).is_ok());

  const std::string wrong = fresh("wrong_format.h5");
  edit_shard(wrong, [](hid_t f) { set_fixed_string_attr(f, "format", "mobula-checkpoint"); });
  EXPECT_TRUE(contains(open_error(wrong), "attribute format is 'mobula-checkpoint', expected 'mobula-image-shard'"));

  const std::string noformat = fresh("no_format.h5");
  edit_shard(noformat, [](hid_t f) { ASSERT_GE(H5Adelete(f, "format"), 0); });
  EXPECT_TRUE(contains(open_error(noformat), "no 'format' attribute"));

  const std::string version = fresh("version.h5");
  edit_shard(version, [](hid_t f) {
    ASSERT_GE(H5Adelete(f, "version"), 0);
    const hid_t space = H5Screate(H5S_SCALAR);
    const hid_t attr = H5Acreate2(f, "version", H5T_STD_I64LE, space, H5P_DEFAULT, H5P_DEFAULT);
    const int64_t v = 2;
    ASSERT_GE(H5Awrite(attr, H5T_NATIVE_INT64, &v), 0);
    H5Aclose(attr);
    H5Sclose(space);
  });
  EXPECT_TRUE(contains(open_error(version), "shard format version 2, this mobula reads version 1"));

  const std::string past = fresh("offsets_past_end.h5");
  edit_shard(past, [](hid_t f) {
    const hid_t d = H5Dopen2(f, "offsets", H5P_DEFAULT);
    std::vector<uint64_t> off(6);
    ASSERT_GE(H5Dread(d, H5T_NATIVE_UINT64, H5S_ALL, H5S_ALL, H5P_DEFAULT, off.data()), 0);
    off[3] = off[5] + 100;
    off[4] = off[5] + 200;
    off[5] += 300;
    ASSERT_GE(H5Dwrite(d, H5T_NATIVE_UINT64, H5S_ALL, H5S_ALL, H5P_DEFAULT, off.data()), 0);
    H5Dclose(d);
  });
  EXPECT_TRUE(contains(open_error(past), "/offsets[3] = "));
  EXPECT_TRUE(contains(open_error(past), "is past the end of /data"));

  const std::string backwards = fresh("offsets_backwards.h5");
  edit_shard(backwards, [](hid_t f) {
    const hid_t d = H5Dopen2(f, "offsets", H5P_DEFAULT);
    std::vector<uint64_t> off(6);
    ASSERT_GE(H5Dread(d, H5T_NATIVE_UINT64, H5S_ALL, H5S_ALL, H5P_DEFAULT, off.data()), 0);
    std::swap(off[2], off[3]);
    ASSERT_GE(H5Dwrite(d, H5T_NATIVE_UINT64, H5S_ALL, H5S_ALL, H5P_DEFAULT, off.data()), 0);
    H5Dclose(d);
  });
  EXPECT_TRUE(contains(open_error(backwards), "/offsets is not increasing at sample 2"));

  const std::string nolabels = fresh("no_labels.h5");
  edit_shard(nolabels, [](hid_t f) { ASSERT_GE(H5Ldelete(f, "labels", H5P_DEFAULT), 0); });
  EXPECT_TRUE(contains(open_error(nolabels), "dataset /labels is missing"));

  const std::string count = fresh("count.h5");
  edit_shard(count, [](hid_t f) {
    const hid_t a = H5Aopen(f, "count", H5P_DEFAULT);
    const uint64_t v = 4;
    ASSERT_GE(H5Awrite(a, H5T_NATIVE_UINT64, &v), 0);
    H5Aclose(a);
  });
  EXPECT_TRUE(contains(open_error(count), "dataset /offsets has 6 entries, expected 5"));

  const std::string cut = fresh("truncated.h5");
  fs::resize_file(cut, fs::file_size(cut) / 2);
  EXPECT_TRUE(contains(open_error(cut), "H5Fopen failed (truncated file"));

  const std::string text = scratch("text.h5");
  std::ofstream(text) << "not hdf5\n";
  EXPECT_TRUE(contains(open_error(text), "not an HDF5 file"));

  auto missing = ShardReader::open(scratch("missing.h5"));
  ASSERT_FALSE(missing.is_ok());
  EXPECT_EQ(missing.status().code(), Status::Code::kNotFound);
}

// A shard made from scratch through the C API the way another tool (h5py) would: int64 offsets and
// labels, variable-length strings, signed integer attributes, no /width or /height.
TEST(ImageShards, ForeignWriterIsRead) {
  const std::string path = scratch("foreign.h5");
  const Samples s = make_samples(0, 3);
  std::vector<uint8_t> data;
  std::vector<int64_t> offsets{0}, labels;
  for (size_t i = 0; i < 3; ++i) {
    data.insert(data.end(), s.encoded[i].begin(), s.encoded[i].end());
    offsets.push_back(int64_t(data.size()));
    labels.push_back(s.labels[i]);
  }
  const hid_t f = H5Fcreate(path.c_str(), H5F_ACC_TRUNC, H5P_DEFAULT, H5P_DEFAULT);
  ASSERT_GE(f, 0);
  auto dataset = [&](const char* name, hid_t ftype, hid_t mtype, const void* p, hsize_t n) {
    const hid_t space = H5Screate_simple(1, &n, nullptr);
    const hid_t d = H5Dcreate2(f, name, ftype, space, H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
    ASSERT_GE(d, 0);
    ASSERT_GE(H5Dwrite(d, mtype, H5S_ALL, H5S_ALL, H5P_DEFAULT, p), 0);
    H5Dclose(d);
    H5Sclose(space);
  };
  dataset("data", H5T_STD_U8LE, H5T_NATIVE_UINT8, data.data(), data.size());
  dataset("offsets", H5T_STD_I64LE, H5T_NATIVE_INT64, offsets.data(), offsets.size());
  dataset("labels", H5T_STD_I64LE, H5T_NATIVE_INT64, labels.data(), labels.size());
  auto str = [&](const char* name, const char* value) {
    const hid_t t = H5Tcopy(H5T_C_S1);
    H5Tset_size(t, H5T_VARIABLE);
    const hid_t space = H5Screate(H5S_SCALAR);
    const hid_t a = H5Acreate2(f, name, t, space, H5P_DEFAULT, H5P_DEFAULT);
    ASSERT_GE(H5Awrite(a, t, &value), 0);
    H5Aclose(a);
    H5Sclose(space);
    H5Tclose(t);
  };
  auto num = [&](const char* name, int64_t v) {
    const hid_t space = H5Screate(H5S_SCALAR);
    const hid_t a = H5Acreate2(f, name, H5T_STD_I64LE, space, H5P_DEFAULT, H5P_DEFAULT);
    ASSERT_GE(H5Awrite(a, H5T_NATIVE_INT64, &v), 0);
    H5Aclose(a);
    H5Sclose(space);
  };
  str("format", "mobula-image-shard");
  str("encoding", "png");
  num("version", 1);
  num("count", 3);
  num("first_index", 0);
  ASSERT_GE(H5Fclose(f), 0);
  auto r = ShardReader::open(path);
  ASSERT_TRUE(r.is_ok()) << r.status().message();
  EXPECT_EQ(r->count(), 3u);
  EXPECT_EQ(*r->read(2), s.encoded[2]);
  EXPECT_EQ(r->label(1), s.labels[1]);
  EXPECT_EQ(r->width(0), -1);
  EXPECT_EQ(r->generator(), "");
}

// ---- dataset ---------------------------------------------------------------------------------

TEST(ImageDataset, SyntheticDatasetOverThreeShards) {
  const std::string dir = scratch("synth");
  ASSERT_TRUE(generate_synthetic_dataset(dir, 250, 100, 32, 7, "png").is_ok());
  EXPECT_TRUE(fs::exists(fs::path(dir) / "shard-00000.h5"));
  EXPECT_TRUE(fs::exists(fs::path(dir) / "shard-00002.h5"));
  EXPECT_FALSE(fs::exists(fs::path(dir) / "shard-00003.h5"));
  EXPECT_TRUE(fs::exists(fs::path(dir) / "dataset.json"));
  auto d = ImageDataset::open(dir);
  ASSERT_TRUE(d.is_ok()) << d.status().message();
  EXPECT_EQ(d->size(), 250u);
  EXPECT_EQ(d->shard_count(), 3u);
  for (uint64_t g : {0, 1, 99, 100, 150, 199, 200, 249}) {
    int label = -1;
    const Image want = synth_image(7, g, 32, &label);
    auto bytes = d->read(g);
    ASSERT_TRUE(bytes.is_ok()) << bytes.status().message();
    EXPECT_EQ(*bytes, png_of(want)) << "global index " << g;
    auto im = decode_image(*bytes);
    ASSERT_TRUE(im.is_ok());
    EXPECT_EQ(im->pixels, want.pixels);
    EXPECT_EQ(d->label(g), label);
  }
  EXPECT_FALSE(d->read(250).is_ok());
  EXPECT_EQ(d->label(250), -1);

  // Same parameters again: nothing to do; different ones: refused.
  EXPECT_TRUE(generate_synthetic_dataset(dir, 250, 100, 32, 7, "png").is_ok());
  auto st = generate_synthetic_dataset(dir, 250, 100, 32, 8, "png");
  EXPECT_TRUE(contains(st.message(), "holds a different dataset")) << st.message();
  EXPECT_EQ(generate_synthetic_dataset(scratch("bad"), 10, 5, 3, 1, "png").code(), Status::Code::kInvalidArgument);

  const std::string jdir = scratch("synth_jpeg");
  ASSERT_TRUE(generate_synthetic_dataset(jdir, 40, 16, 64, 3, "jpeg").is_ok());
  auto j = ImageDataset::open(jdir);
  ASSERT_TRUE(j.is_ok()) << j.status().message();
  EXPECT_EQ(j->size(), 40u);
  EXPECT_EQ(j->shard_count(), 3u);
  auto im = decode_image(*j->read(33));
  ASSERT_TRUE(im.is_ok());
  EXPECT_LT(mean_abs_error(*im, synth_image(3, 33, 64, nullptr)), 6.0);
}

TEST(ImageDataset, GapsAndOverlapsAreRefused) {
  const std::string dir = scratch("gap");
  fs::create_directories(dir);
  for (auto [k, first] : std::vector<std::pair<int, uint64_t>>{{0, 0}, {1, 10}, {2, 25}}) {
    const Samples s = make_samples(first, 10, 8);
    ASSERT_TRUE(write_shard(dir + "/" + shard_file_name(uint64_t(k)), first, s.encoded, s.labels, "png", "").is_ok());
  }
  auto d = ImageDataset::open(dir);
  ASSERT_FALSE(d.is_ok());
  std::printf("  refused: %s\n", d.status().message().c_str());
  EXPECT_TRUE(contains(d.status().message(), "gap in the global indices: samples 20..24 are in no shard"));

  const std::string odir = scratch("overlap");
  fs::create_directories(odir);
  for (auto [k, first] : std::vector<std::pair<int, uint64_t>>{{0, 0}, {1, 5}}) {
    const Samples s = make_samples(first, 10, 8);
    ASSERT_TRUE(write_shard(odir + "/" + shard_file_name(uint64_t(k)), first, s.encoded, s.labels, "png", "").is_ok());
  }
  auto o = ImageDataset::open(odir);
  ASSERT_FALSE(o.is_ok());
  std::printf("  refused: %s\n", o.status().message().c_str());
  EXPECT_TRUE(contains(o.status().message(), "overlapping shards: shard-00001.h5 starts at 5"));

  auto none = ImageDataset::open(scratch("empty_dir_that_does_not_exist"));
  EXPECT_EQ(none.status().code(), Status::Code::kNotFound);
}

// ---- tools and rates -------------------------------------------------------------------------

TEST(ImageShards, H5dumpListsTheDatasets) {
  if (!fs::exists("/usr/bin/h5dump")) GTEST_SKIP() << "h5dump not installed (Debian hdf5-tools)";
  const std::string path = scratch("dump.h5");
  const Samples s = make_samples(0, 4);
  ASSERT_TRUE(write_shard(path, 0, s.encoded, s.labels, "png", "synth seed=9 size=24").is_ok());
  FILE* p = popen(("/usr/bin/h5dump -H '" + path + "' 2>&1").c_str(), "r");
  ASSERT_NE(p, nullptr);
  std::string out;
  char buf[4096];
  for (size_t n; (n = fread(buf, 1, sizeof buf, p)) > 0;) out.append(buf, n);
  EXPECT_EQ(pclose(p), 0) << out;
  for (const char* want : {"DATASET \"data\"", "DATASET \"offsets\"", "DATASET \"labels\"", "DATASET \"width\"",
                           "DATASET \"height\"", "ATTRIBUTE \"format\"", "ATTRIBUTE \"first_index\"",
                           "ATTRIBUTE \"encoding\"", "H5T_STD_U8LE", "H5T_STD_U64LE", "H5T_STD_I32LE"})
    EXPECT_TRUE(contains(out, want)) << want << " not in:\n" << out;
}

TEST(ImageShards, DecodeAndReadRates) {
  constexpr int kN = 500;
  const std::string path = scratch("rate.h5");
  Samples png, jpg;
  for (int i = 0; i < kN; ++i) {
    int label = 0;
    const Image im = synth_image(11, uint64_t(i), 64, &label);
    png.encoded.push_back(png_of(im));
    png.labels.push_back(label);
    jpg.encoded.push_back(*encode_jpeg(im, 90));
  }
  auto t0 = std::chrono::steady_clock::now();
  size_t pixels = 0;
  for (int rep = 0; rep < 4; ++rep)
    for (const auto& b : png.encoded) pixels += decode_png(b)->pixels.size();
  const double png_rate = 4 * kN / seconds_since(t0);
  t0 = std::chrono::steady_clock::now();
  for (int rep = 0; rep < 4; ++rep)
    for (const auto& b : jpg.encoded) pixels += decode_jpeg(b)->pixels.size();
  const double jpeg_rate = 4 * kN / seconds_since(t0);
  EXPECT_EQ(pixels, size_t(8) * kN * 64 * 64 * 3);

  ASSERT_TRUE(write_shard(path, 0, png.encoded, png.labels, "png", "rate").is_ok());
  auto r = ShardReader::open(path);
  ASSERT_TRUE(r.is_ok());
  t0 = std::chrono::steady_clock::now();
  size_t bytes = 0;
  for (int rep = 0; rep < 4; ++rep)
    for (uint64_t i = 0; i < r->count(); ++i) bytes += r->read(i)->size();
  const double read_s = seconds_since(t0);
  const double avg = std::accumulate(png.encoded.begin(), png.encoded.end(), 0.0,
                                     [](double a, const auto& e) { return a + double(e.size()); }) /
                     kN;
  std::printf("64x64 RGB PNG decode: %.0f images/s (%.0f bytes each)\n", png_rate, avg);
  std::printf("64x64 RGB JPEG q90 decode: %.0f images/s\n", jpeg_rate);
  std::printf("shard read (one hyperslab per sample, page cache warm): %.0f samples/s, %.1f MB/s\n", 4 * kN / read_s,
              double(bytes) / read_s / 1e6);
  RecordProperty("png_decode_images_per_s", std::to_string(png_rate));
  RecordProperty("shard_read_samples_per_s", std::to_string(4 * kN / read_s));
}

}  // namespace
}  // namespace mobula::io
