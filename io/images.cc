#include "io/images.h"

#include <cstdio>  // before jpeglib.h, which uses FILE and size_t

#include <jpeglib.h>
#include <png.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <cmath>
#include <csetjmp>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <numbers>
#include <sstream>

#include "core/runtime/files.h"
#include "core/runtime/hash.h"

namespace mobula::io {

namespace fs = std::filesystem;

namespace {

// ---- Image checks ------------------------------------------------------------------------------

std::string first_bytes(std::span<const uint8_t> b) {
  std::string s;
  char buf[8];
  for (size_t i = 0; i < b.size() && i < 8; ++i) {
    std::snprintf(buf, sizeof buf, "%s%02x", i ? " " : "", b[i]);
    s += buf;
  }
  return s.empty() ? "no bytes" : "starts with " + s;
}

bool is_png(std::span<const uint8_t> b) {
  static const uint8_t kMagic[8] = {0x89, 'P', 'N', 'G', '\r', '\n', 0x1a, '\n'};
  return b.size() >= 8 && std::memcmp(b.data(), kMagic, 8) == 0;
}

bool is_jpeg(std::span<const uint8_t> b) {
  return b.size() >= 3 && b[0] == 0xff && b[1] == 0xd8 && b[2] == 0xff;
}

Status check_image(const Image& im, const char* codec, int max_channels) {
  if (im.width <= 0 || im.height <= 0)
    return Status::invalid_argument(std::string(codec) + ": image is " + std::to_string(im.width) + "x" +
                                    std::to_string(im.height) + "; width and height must be positive");
  if (im.channels < 1 || im.channels > max_channels || (max_channels == 3 && im.channels == 2))
    return Status::invalid_argument(std::string(codec) + ": " + std::to_string(im.channels) + " channels; " +
                                    (max_channels == 3 ? "JPEG takes 1 (gray) or 3 (RGB)" : "PNG takes 1 to 4"));
  const uint64_t bytes = uint64_t(im.width) * uint64_t(im.height) * uint64_t(im.channels);
  if (bytes > kMaxImageBytes)
    return Status::invalid_argument(std::string(codec) + ": image of " + std::to_string(bytes) +
                                    " bytes is over the limit of " + std::to_string(kMaxImageBytes));
  if (im.pixels.size() != bytes)
    return Status::invalid_argument(std::string(codec) + ": " + std::to_string(im.pixels.size()) +
                                    " pixel bytes for a " + std::to_string(im.width) + "x" + std::to_string(im.height) +
                                    "x" + std::to_string(im.channels) + " image (expected " + std::to_string(bytes) +
                                    ")");
  return Status::ok();
}

Status too_large(const char* codec, uint64_t w, uint64_t h, uint64_t c) {
  return Status::io(std::string(codec) + ": image is " + std::to_string(w) + "x" + std::to_string(h) + "x" +
                    std::to_string(c) + ", over the decode limit of " + std::to_string(kMaxImageBytes) +
                    " bytes (corrupt header, or an image too large for this pipeline)");
}

// ---- PNG (simplified API: no setjmp needed, errors come back in png_image::message) -------------

png_uint_32 png_format(int channels) {
  switch (channels) {
    case 1:
      return PNG_FORMAT_GRAY;
    case 2:
      return PNG_FORMAT_GA;
    case 3:
      return PNG_FORMAT_RGB;
    default:
      return PNG_FORMAT_RGBA;
  }
}

int png_channels(png_uint_32 format) {
  return ((format & PNG_FORMAT_FLAG_COLOR) ? 3 : 1) + ((format & PNG_FORMAT_FLAG_ALPHA) ? 1 : 0);
}

struct PngImage {
  png_image img;
  PngImage() {
    std::memset(&img, 0, sizeof img);
    img.version = PNG_IMAGE_VERSION;
  }
  ~PngImage() { png_image_free(&img); }
  PngImage(const PngImage&) = delete;
  PngImage& operator=(const PngImage&) = delete;
  Status fail(const char* what) const {
    return Status::io(std::string("png: ") + what + ": " + (img.message[0] ? img.message : "unknown libpng error") +
                      "; the bytes are not a complete, valid PNG (truncated or corrupt?)");
  }
};

// ---- JPEG (libjpeg: error_exit must not return, so it longjmps back; never exit()) -------------

struct JpegError {
  jpeg_error_mgr mgr;  // first member: libjpeg's err pointer is cast back to JpegError
  std::jmp_buf jump;
  char message[JMSG_LENGTH_MAX + 64];
};

[[noreturn]] void jpeg_fail(j_common_ptr c) {
  auto* e = reinterpret_cast<JpegError*>(c->err);
  (*c->err->format_message)(c, e->message);
  std::longjmp(e->jump, 1);
}

// msg_level -1 is a warning, which for a decoder means corrupt data (libjpeg would go on and fill
// the rest with gray); we fail instead. Trace messages (level >= 0) are dropped.
void jpeg_emit(j_common_ptr c, int msg_level) {
  if (msg_level < 0) jpeg_fail(c);
}

void jpeg_install(JpegError* e) {
  std::memset(e, 0, sizeof *e);
  jpeg_std_error(&e->mgr);
  e->mgr.error_exit = jpeg_fail;
  e->mgr.emit_message = jpeg_emit;
}

// Everything between setjmp and a possible longjmp happens here; objects with destructors live in
// the caller, so the longjmp skips none. Returns false with e->message set on failure.
// `header_only`: stop after the header (probe).
bool jpeg_decode_raw(std::span<const uint8_t> bytes, jpeg_decompress_struct* cinfo, JpegError* e, Image* out,
                     bool header_only) {
  if (setjmp(e->jump)) return false;
  jpeg_create_decompress(cinfo);
  jpeg_mem_src(cinfo, bytes.data(), static_cast<unsigned long>(bytes.size()));
  jpeg_read_header(cinfo, TRUE);
  if (cinfo->jpeg_color_space == JCS_CMYK || cinfo->jpeg_color_space == JCS_YCCK) {
    std::snprintf(e->message, sizeof e->message, "CMYK/YCCK images are not supported; convert them to RGB");
    return false;
  }
  cinfo->out_color_space = cinfo->num_components == 1 ? JCS_GRAYSCALE : JCS_RGB;
  out->width = static_cast<int>(cinfo->image_width);
  out->height = static_cast<int>(cinfo->image_height);
  out->channels = cinfo->num_components == 1 ? 1 : 3;
  const uint64_t bytes_out = uint64_t(cinfo->image_width) * cinfo->image_height * uint64_t(out->channels);
  if (bytes_out > kMaxImageBytes) {
    std::snprintf(e->message, sizeof e->message, "image is %ux%ux%d, over the decode limit of %llu bytes",
                  cinfo->image_width, cinfo->image_height, out->channels,
                  static_cast<unsigned long long>(kMaxImageBytes));
    return false;
  }
  if (header_only) return true;
  jpeg_start_decompress(cinfo);
  if (cinfo->output_width != cinfo->image_width || cinfo->output_height != cinfo->image_height ||
      cinfo->output_components != out->channels) {
    std::snprintf(e->message, sizeof e->message, "unexpected output geometry %ux%ux%d", cinfo->output_width,
                  cinfo->output_height, cinfo->output_components);
    return false;
  }
  out->pixels.resize(bytes_out);
  const size_t stride = size_t(cinfo->output_width) * size_t(out->channels);
  while (cinfo->output_scanline < cinfo->output_height) {
    JSAMPROW row = out->pixels.data() + size_t(cinfo->output_scanline) * stride;
    if (jpeg_read_scanlines(cinfo, &row, 1) != 1) {
      std::snprintf(e->message, sizeof e->message, "no scanline decoded at row %u", cinfo->output_scanline);
      return false;
    }
  }
  jpeg_finish_decompress(cinfo);
  return true;
}

bool jpeg_encode_raw(const Image& im, int quality, jpeg_compress_struct* cinfo, JpegError* e, unsigned char** buf,
                     unsigned long* size) {
  if (setjmp(e->jump)) return false;
  jpeg_create_compress(cinfo);
  jpeg_mem_dest(cinfo, buf, size);
  cinfo->image_width = static_cast<JDIMENSION>(im.width);
  cinfo->image_height = static_cast<JDIMENSION>(im.height);
  cinfo->input_components = im.channels;
  cinfo->in_color_space = im.channels == 1 ? JCS_GRAYSCALE : JCS_RGB;
  jpeg_set_defaults(cinfo);
  jpeg_set_quality(cinfo, quality, TRUE);
  jpeg_start_compress(cinfo, TRUE);
  const size_t stride = size_t(im.width) * size_t(im.channels);
  while (cinfo->next_scanline < cinfo->image_height) {
    JSAMPROW row = const_cast<uint8_t*>(im.pixels.data()) + size_t(cinfo->next_scanline) * stride;
    jpeg_write_scanlines(cinfo, &row, 1);
  }
  jpeg_finish_compress(cinfo);
  return true;
}

Result<Image> jpeg_decode(std::span<const uint8_t> bytes, bool header_only) {
  if (bytes.empty()) return Status::io("jpeg: no bytes to decode");
  Image out;
  JpegError e;
  jpeg_install(&e);
  jpeg_decompress_struct cinfo;
  std::memset(&cinfo, 0, sizeof cinfo);
  cinfo.err = &e.mgr;
  const bool ok = jpeg_decode_raw(bytes, &cinfo, &e, &out, header_only);
  jpeg_destroy_decompress(&cinfo);  // safe on a partly set-up struct (mem == NULL: nothing to free)
  if (!ok)
    return Status::io(std::string("jpeg: ") + e.message + "; the bytes are not a complete, valid JPEG (" +
                      std::to_string(bytes.size()) + " bytes, " + first_bytes(bytes) + ")");
  return out;
}

// ---- Procedural images ---------------------------------------------------------------------------

// Random number k of sample `base` = splitmix64(splitmix64(seed) ^ index).
uint64_t draw(uint64_t base, uint64_t k) {
  return splitmix64(base ^ splitmix64(k));
}
double uniform(uint64_t base, uint64_t k) {
  return static_cast<double>(draw(base, k) >> 11) * 0x1.0p-53;
}

const char* const kDocs = "docs/formats/images.md";

}  // namespace

// ---- Codecs ------------------------------------------------------------------------------------

Result<std::vector<uint8_t>> encode_png(const Image& image) {
  MOBULA_RETURN_IF_ERROR(check_image(image, "png", 4));
  PngImage p;
  p.img.width = static_cast<png_uint_32>(image.width);
  p.img.height = static_cast<png_uint_32>(image.height);
  p.img.format = png_format(image.channels);
  png_alloc_size_t size = 0;
  if (!png_image_write_to_memory(&p.img, nullptr, &size, 0, image.pixels.data(), 0, nullptr))
    return p.fail("png_image_write_to_memory (size)");
  std::vector<uint8_t> out(size);
  if (!png_image_write_to_memory(&p.img, out.data(), &size, 0, image.pixels.data(), 0, nullptr))
    return p.fail("png_image_write_to_memory");
  out.resize(size);
  return out;
}

Result<Image> decode_png(std::span<const uint8_t> bytes) {
  if (!is_png(bytes))
    return Status::io("png: not a PNG (" + std::to_string(bytes.size()) + " bytes, " + first_bytes(bytes) +
                      "; a PNG starts with 89 50 4e 47 0d 0a 1a 0a)");
  PngImage p;
  if (!png_image_begin_read_from_memory(&p.img, bytes.data(), bytes.size()))
    return p.fail("png_image_begin_read_from_memory");
  p.img.format &= ~png_uint_32{PNG_FORMAT_FLAG_COLORMAP | PNG_FORMAT_FLAG_LINEAR};
  Image out;
  out.width = static_cast<int>(p.img.width);
  out.height = static_cast<int>(p.img.height);
  out.channels = png_channels(p.img.format);
  const uint64_t n = uint64_t(p.img.width) * p.img.height * uint64_t(out.channels);
  if (p.img.width > 0x7fffffffU || p.img.height > 0x7fffffffU || n > kMaxImageBytes)
    return too_large("png", p.img.width, p.img.height, uint64_t(out.channels));
  out.pixels.resize(n);
  if (!png_image_finish_read(&p.img, nullptr, out.pixels.data(), 0, nullptr)) return p.fail("png_image_finish_read");
  return out;
}

Result<std::vector<uint8_t>> encode_jpeg(const Image& image, int quality) {
  MOBULA_RETURN_IF_ERROR(check_image(image, "jpeg", 3));
  if (quality < 1 || quality > 100)
    return Status::invalid_argument("jpeg: quality " + std::to_string(quality) + " outside 1..100");
  JpegError e;
  jpeg_install(&e);
  jpeg_compress_struct cinfo;
  std::memset(&cinfo, 0, sizeof cinfo);
  cinfo.err = &e.mgr;
  unsigned char* buf = nullptr;  // malloc'ed by jpeg_mem_dest; always ours to free
  unsigned long size = 0;
  const bool ok = jpeg_encode_raw(image, quality, &cinfo, &e, &buf, &size);
  jpeg_destroy_compress(&cinfo);
  std::vector<uint8_t> out;
  if (ok) out.assign(buf, buf + size);
  std::free(buf);
  if (!ok) return Status::io(std::string("jpeg: encoding failed: ") + e.message);
  return out;
}

Result<Image> decode_jpeg(std::span<const uint8_t> bytes) {
  return jpeg_decode(bytes, false);
}

Result<Image> decode_image(std::span<const uint8_t> bytes) {
  if (is_png(bytes)) return decode_png(bytes);
  if (is_jpeg(bytes)) return decode_jpeg(bytes);
  return Status::io("image: neither PNG nor JPEG (" + std::to_string(bytes.size()) + " bytes, " + first_bytes(bytes) +
                    "); image shards hold PNG or JPEG only");
}

Result<ImageInfo> probe_image(std::span<const uint8_t> bytes) {
  ImageInfo info;
  if (is_png(bytes)) {
    PngImage p;
    if (!png_image_begin_read_from_memory(&p.img, bytes.data(), bytes.size()))
      return p.fail("png_image_begin_read_from_memory");
    info.width = static_cast<int>(std::min<png_uint_32>(p.img.width, 0x7fffffffU));
    info.height = static_cast<int>(std::min<png_uint_32>(p.img.height, 0x7fffffffU));
    info.channels = png_channels(p.img.format);
    info.encoding = "png";
    return info;
  }
  if (is_jpeg(bytes)) {
    auto im = jpeg_decode(bytes, true);
    if (!im) return im.status();
    info.width = im->width;
    info.height = im->height;
    info.channels = im->channels;
    info.encoding = "jpeg";
    return info;
  }
  return Status::io("image: neither PNG nor JPEG (" + std::to_string(bytes.size()) + " bytes, " + first_bytes(bytes) +
                    ")");
}

// ---- Procedural images ---------------------------------------------------------------------------

const char* synth_class_name(int label) {
  static const char* const kNames[kSynthClasses] = {"disc", "square", "triangle", "ring"};
  return label >= 0 && label < kSynthClasses ? kNames[label] : "?";
}

Image synth_image(uint64_t seed, uint64_t index, int size, int* label) {
  if (size < kSynthMinSize || size > kSynthMaxSize) {
    std::fprintf(stderr, "mobula: internal error: synth_image size %d outside [%d, %d]\n", size, kSynthMinSize,
                 kSynthMaxSize);
    std::abort();
  }
  const uint64_t base = splitmix64(splitmix64(seed) ^ index);
  const int cls = static_cast<int>(draw(base, 0) % kSynthClasses);
  if (label) *label = cls;
  // Dark background with a bright shape, or the reverse: channel bands [0, 110] and [145, 255], so
  // the shape differs from the background by >= 35 per channel everywhere.
  const bool dark = draw(base, 1) & 1;
  auto band = [&](uint64_t k, bool low) {
    std::array<double, 3> c{};
    const uint64_t h = draw(base, k);
    for (int i = 0; i < 3; ++i) {
      const double u = static_cast<double>((h >> (16 * i)) & 0xffff) / 65535.0;
      c[size_t(i)] = low ? 110.0 * u : 145.0 + 110.0 * u;
    }
    return c;
  };
  const auto bg0 = band(2, dark), bg1 = band(3, dark), fg = band(4, !dark);
  const double dir = 2 * std::numbers::pi * uniform(base, 5), dcos = std::cos(dir), dsin = std::sin(dir);
  const double s = size;
  const double r = s * (0.15 + 0.15 * uniform(base, 6));
  const double cx = r + (s - 2 * r) * uniform(base, 7), cy = r + (s - 2 * r) * uniform(base, 8);
  const double rot = 2 * std::numbers::pi * uniform(base, 9), rcos = std::cos(rot), rsin = std::sin(rot);
  // Triangle: equilateral, circumradius r, inside iff the point is within r/2 (the inradius) of the
  // centre along each of the three edge normals.
  double ncos[3], nsin[3];
  for (int k = 0; k < 3; ++k) {
    ncos[k] = std::cos(std::numbers::pi / 2 + 2 * std::numbers::pi * k / 3);
    nsin[k] = std::sin(std::numbers::pi / 2 + 2 * std::numbers::pi * k / 3);
  }
  auto inside = [&](double px, double py) {
    const double dx = px - cx, dy = py - cy;
    const double u = dx * rcos + dy * rsin, v = -dx * rsin + dy * rcos;
    const double d2 = dx * dx + dy * dy;
    switch (cls) {
      case 0:
        return d2 <= r * r;
      case 1:
        return std::abs(u) <= 0.75 * r && std::abs(v) <= 0.75 * r;
      case 2:
        for (int k = 0; k < 3; ++k)
          if (u * ncos[k] + v * nsin[k] > 0.5 * r) return false;
        return true;
      default:
        return d2 <= r * r && d2 >= 0.3025 * r * r;  // ring: inner radius 0.55 r
    }
  };
  Image im;
  im.width = im.height = size;
  im.channels = 3;
  im.pixels.resize(size_t(size) * size_t(size) * 3);
  uint8_t* p = im.pixels.data();
  for (int y = 0; y < size; ++y) {
    for (int x = 0; x < size; ++x) {
      const double px = x + 0.5, py = y + 0.5;
      const bool in = inside(px, py);
      const double t =
          std::clamp(((px / s - 0.5) * dcos + (py / s - 0.5) * dsin) / std::numbers::sqrt2 + 0.5, 0.0, 1.0);
      const uint64_t noise = draw(base, 1000 + uint64_t(y) * uint64_t(size) + uint64_t(x));
      for (int c = 0; c < 3; ++c) {
        const double v = in ? fg[size_t(c)] : bg0[size_t(c)] + (bg1[size_t(c)] - bg0[size_t(c)]) * t;
        const int n = static_cast<int>((noise >> (8 * c)) & 15) - 8;  // -8..7
        *p++ = static_cast<uint8_t>(std::clamp(static_cast<int>(std::lround(v)) + n, 0, 255));
      }
    }
  }
  return im;
}

// ---- Shards ------------------------------------------------------------------------------------

namespace {

Status write_dataset(hid_t file, const char* name, hid_t file_type, hid_t mem_type, const void* data, hsize_t n,
                     const std::string& path) {
  const std::string what = path + ":/" + name;
  hsize_t dims[1] = {n};
  MOBULA_H5_ID(space, H5Screate_simple(1, dims, nullptr), what);
  MOBULA_H5_ID(dset, H5Dcreate2(file, name, file_type, space.get(), H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT), what);
  MOBULA_H5(H5Dwrite(dset.get(), mem_type, H5S_ALL, H5S_ALL, H5P_DEFAULT, data), what);
  return dset.close();
}

// Variable-length UTF-8 string (h5py reads it as str).
Status write_str_attr(hid_t obj, const char* name, const std::string& value, const std::string& path) {
  const std::string what = path + ":/@" + name;
  MOBULA_H5_ID(type, H5Tcopy(H5T_C_S1), what);
  MOBULA_H5(H5Tset_size(type.get(), H5T_VARIABLE), what);
  MOBULA_H5(H5Tset_cset(type.get(), H5T_CSET_UTF8), what);
  MOBULA_H5_ID(space, H5Screate(H5S_SCALAR), what);
  MOBULA_H5_ID(attr, H5Acreate2(obj, name, type.get(), space.get(), H5P_DEFAULT, H5P_DEFAULT), what);
  const char* c = value.c_str();
  MOBULA_H5(H5Awrite(attr.get(), type.get(), &c), what);
  return attr.close();
}

Status write_u64_attr(hid_t obj, const char* name, hid_t file_type, uint64_t value, const std::string& path) {
  const std::string what = path + ":/@" + name;
  MOBULA_H5_ID(space, H5Screate(H5S_SCALAR), what);
  MOBULA_H5_ID(attr, H5Acreate2(obj, name, file_type, space.get(), H5P_DEFAULT, H5P_DEFAULT), what);
  MOBULA_H5(H5Awrite(attr.get(), H5T_NATIVE_UINT64, &value), what);
  return attr.close();
}

Result<bool> exists(hid_t file, const char* name, bool attribute, const std::string& path) {
  const htri_t e = attribute ? H5Aexists(file, name) : H5Lexists(file, name, H5P_DEFAULT);
  if (e < 0) return h5_error(attribute ? "H5Aexists" : "H5Lexists", path + ":/" + name, __FILE__, __LINE__);
  return e > 0;
}

Status missing_attr(const std::string& path, const char* name) {
  return Status::io(path + ": attribute '" + name + "' is missing; not a complete mobula image shard (" + kDocs + ")");
}

// Opens attribute `name` and checks it holds exactly one element.
Result<Handle> open_scalar_attr(hid_t file, const char* name, const std::string& path) {
  const std::string what = path + ":/@" + name;
  MOBULA_H5_ID(attr, H5Aopen(file, name, H5P_DEFAULT), what);
  MOBULA_H5_ID(space, H5Aget_space(attr.get()), what);
  const hssize_t n = H5Sget_simple_extent_npoints(space.get());
  if (n < 0) return h5_error("H5Sget_simple_extent_npoints", what, __FILE__, __LINE__);
  if (n != 1)
    return Status::io(path + ": attribute '" + name + "' has " + std::to_string(n) +
                      " elements, expected a scalar; the shard is corrupt (" + kDocs + ")");
  return attr;
}

// Fixed-length or variable-length string attribute.
Result<std::string> read_str_attr(hid_t file, const char* name, const std::string& path) {
  const std::string what = path + ":/@" + name;
  auto attr = open_scalar_attr(file, name, path);
  if (!attr) return attr.status();
  MOBULA_H5_ID(type, H5Aget_type(attr->get()), what);
  if (H5Tget_class(type.get()) != H5T_STRING)
    return Status::io(path + ": attribute '" + name + "' is not a string; the shard is corrupt (" + kDocs + ")");
  const htri_t var = H5Tis_variable_str(type.get());
  if (var < 0) return h5_error("H5Tis_variable_str", what, __FILE__, __LINE__);
  if (var > 0) {
    MOBULA_H5_ID(mem, H5Tcopy(H5T_C_S1), what);
    MOBULA_H5(H5Tset_size(mem.get(), H5T_VARIABLE), what);
    MOBULA_H5(H5Tset_cset(mem.get(), H5Tget_cset(type.get())), what);
    char* c = nullptr;
    MOBULA_H5(H5Aread(attr->get(), mem.get(), &c), what);
    std::string out = c ? c : "";
    MOBULA_H5(H5free_memory(c), what);
    return out;
  }
  const size_t n = H5Tget_size(type.get());
  if (n == 0) return h5_error("H5Tget_size", what, __FILE__, __LINE__);
  std::string out(n, '\0');
  MOBULA_H5(H5Aread(attr->get(), type.get(), out.data()), what);
  while (!out.empty() && out.back() == '\0') out.pop_back();
  return out;
}

// Non-negative integer attribute of any integer type.
Result<uint64_t> read_uint_attr(hid_t file, const char* name, const std::string& path) {
  const std::string what = path + ":/@" + name;
  auto attr = open_scalar_attr(file, name, path);
  if (!attr) return attr.status();
  MOBULA_H5_ID(type, H5Aget_type(attr->get()), what);
  if (H5Tget_class(type.get()) != H5T_INTEGER)
    return Status::io(path + ": attribute '" + name + "' is not an integer; the shard is corrupt (" + kDocs + ")");
  if (H5Tget_sign(type.get()) == H5T_SGN_2) {
    int64_t v = 0;
    MOBULA_H5(H5Aread(attr->get(), H5T_NATIVE_INT64, &v), what);
    if (v < 0)
      return Status::io(path + ": attribute '" + name + "' = " + std::to_string(v) +
                        " is negative; the shard is corrupt (" + kDocs + ")");
    return static_cast<uint64_t>(v);
  }
  uint64_t v = 0;
  MOBULA_H5(H5Aread(attr->get(), H5T_NATIVE_UINT64, &v), what);
  return v;
}

// Opens the 1-D integer dataset `name`; *n gets its length. Missing: a clear error.
Result<Handle> open_1d(hid_t file, const char* name, const std::string& path, hsize_t* n) {
  const std::string what = path + ":/" + name;
  auto e = exists(file, name, false, path);
  if (!e) return e.status();
  if (!*e)
    return Status::io(path + ": dataset /" + std::string(name) +
                      " is missing; the shard is incomplete or was not written by write_shard, regenerate it (" +
                      kDocs + ")");
  MOBULA_H5_ID(dset, H5Dopen2(file, name, H5P_DEFAULT), what);
  MOBULA_H5_ID(type, H5Dget_type(dset.get()), what);
  if (H5Tget_class(type.get()) != H5T_INTEGER)
    return Status::io(path + ": dataset /" + std::string(name) + " is not of an integer type; the shard is corrupt (" +
                      kDocs + ")");
  MOBULA_H5_ID(space, H5Dget_space(dset.get()), what);
  if (H5Sget_simple_extent_ndims(space.get()) != 1)
    return Status::io(path + ": dataset /" + std::string(name) + " is not 1-D; the shard is corrupt (" + kDocs + ")");
  MOBULA_H5(H5Sget_simple_extent_dims(space.get(), n, nullptr), what);
  return dset;
}

template <class T>
Status read_all(hid_t dset, hid_t mem_type, std::vector<T>* out, hsize_t n, const std::string& what) {
  out->resize(n);
  if (n == 0) return Status::ok();
  MOBULA_H5(H5Dread(dset, mem_type, H5S_ALL, H5S_ALL, H5P_DEFAULT, out->data()), what);
  return Status::ok();
}

// A 1-D integer dataset of exactly `want` elements, read whole.
template <class T>
Status read_index(hid_t file, const char* name, hid_t mem_type, hsize_t want, const std::string& path,
                  std::vector<T>* out) {
  hsize_t n = 0;
  auto dset = open_1d(file, name, path, &n);
  if (!dset) return dset.status();
  if (n != want)
    return Status::io(path + ": dataset /" + std::string(name) + " has " + std::to_string(n) + " entries, expected " +
                      std::to_string(want) + " (from attribute count); the shard is corrupt, regenerate it (" + kDocs +
                      ")");
  return read_all(dset->get(), mem_type, out, n, path + ":/" + name);
}

Status write_shard_file(const std::string& tmp, uint64_t first_index, const std::vector<std::vector<uint8_t>>& encoded,
                        const std::vector<int32_t>& labels, const std::vector<int32_t>& widths,
                        const std::vector<int32_t>& heights, const std::string& encoding,
                        const std::string& generator) {
  std::vector<uint64_t> offsets(encoded.size() + 1, 0);
  for (size_t i = 0; i < encoded.size(); ++i) offsets[i + 1] = offsets[i] + encoded[i].size();
  std::vector<uint8_t> data;
  data.reserve(offsets.back());
  for (const auto& e : encoded) data.insert(data.end(), e.begin(), e.end());
  MOBULA_H5_ID(file, H5Fcreate(tmp.c_str(), H5F_ACC_TRUNC, H5P_DEFAULT, H5P_DEFAULT), tmp);
  const hid_t f = file.get();
  MOBULA_RETURN_IF_ERROR(write_dataset(f, "data", H5T_STD_U8LE, H5T_NATIVE_UINT8, data.data(), data.size(), tmp));
  MOBULA_RETURN_IF_ERROR(
      write_dataset(f, "offsets", H5T_STD_U64LE, H5T_NATIVE_UINT64, offsets.data(), offsets.size(), tmp));
  MOBULA_RETURN_IF_ERROR(
      write_dataset(f, "labels", H5T_STD_I32LE, H5T_NATIVE_INT32, labels.data(), labels.size(), tmp));
  MOBULA_RETURN_IF_ERROR(write_dataset(f, "width", H5T_STD_I32LE, H5T_NATIVE_INT32, widths.data(), widths.size(), tmp));
  MOBULA_RETURN_IF_ERROR(
      write_dataset(f, "height", H5T_STD_I32LE, H5T_NATIVE_INT32, heights.data(), heights.size(), tmp));
  MOBULA_RETURN_IF_ERROR(write_str_attr(f, "format", kShardFormat, tmp));
  MOBULA_RETURN_IF_ERROR(write_u64_attr(f, "version", H5T_STD_U32LE, kShardVersion, tmp));
  MOBULA_RETURN_IF_ERROR(write_u64_attr(f, "count", H5T_STD_U64LE, encoded.size(), tmp));
  MOBULA_RETURN_IF_ERROR(write_u64_attr(f, "first_index", H5T_STD_U64LE, first_index, tmp));
  MOBULA_RETURN_IF_ERROR(write_str_attr(f, "encoding", encoding, tmp));
  MOBULA_RETURN_IF_ERROR(write_str_attr(f, "generator", generator, tmp));
  return file.close();
}

bool shard_number(const std::string& name, uint64_t* k) {
  if (name.size() < 14 || name.rfind("shard-", 0) != 0 || name.substr(name.size() - 3) != ".h5") return false;
  const std::string digits = name.substr(6, name.size() - 9);
  if (digits.size() < 5 || digits.size() > 19 || digits.find_first_not_of("0123456789") != std::string::npos)
    return false;
  *k = std::stoull(digits);
  return true;
}

}  // namespace

Status write_shard(const std::string& path, uint64_t first_index, const std::vector<std::vector<uint8_t>>& encoded,
                   const std::vector<int32_t>& labels, const std::string& encoding, const std::string& generator) {
  hdf5_quiet();
  if (encoded.empty()) return Status::invalid_argument(path + ": no samples; a shard holds at least one image");
  if (labels.size() != encoded.size())
    return Status::invalid_argument(path + ": " + std::to_string(encoded.size()) + " images but " +
                                    std::to_string(labels.size()) + " labels; pass one label per image");
  if (encoding != "png" && encoding != "jpeg")
    return Status::invalid_argument(path + ": encoding '" + encoding + "'; use \"png\" or \"jpeg\"");
  if (first_index > UINT64_MAX - encoded.size())
    return Status::invalid_argument(path + ": first_index " + std::to_string(first_index) + " + " +
                                    std::to_string(encoded.size()) + " samples overflows 64 bits");
  std::vector<int32_t> widths(encoded.size()), heights(encoded.size());
  for (size_t i = 0; i < encoded.size(); ++i) {
    auto info = probe_image(encoded[i]);
    if (!info) return Status::invalid_argument(path + ": sample " + std::to_string(i) + ": " + info.status().message());
    if (info->encoding != encoding)
      return Status::invalid_argument(path + ": sample " + std::to_string(i) + " is " + info->encoding +
                                      " but the shard's encoding is " + encoding + "; one encoding per shard");
    widths[i] = info->width;
    heights[i] = info->height;
  }
  const fs::path p(path);
  const fs::path dir = p.has_parent_path() ? p.parent_path() : fs::path(".");
  const std::string tmp = (dir / ("." + p.filename().string() + ".tmp")).string();
  Status s = write_shard_file(tmp, first_index, encoded, labels, widths, heights, encoding, generator);
  if (s.is_ok()) s = fsync_path(tmp, false);
  if (s.is_ok() && std::rename(tmp.c_str(), path.c_str()) != 0)
    s = Status::io("rename " + tmp + " -> " + path + ": " + std::strerror(errno));
  if (!s.is_ok()) {
    std::error_code ec;
    fs::remove(tmp, ec);
    return s;
  }
  return fsync_path(dir, true);
}

Result<ShardReader> ShardReader::open(const std::string& path) {
  hdf5_quiet();
  std::error_code ec;
  if (!fs::is_regular_file(path, ec))
    return Status::not_found(path + ": no such shard file; check the path, or generate the dataset (" + kDocs + ")");
  const htri_t h5 = H5Fis_hdf5(path.c_str());
  if (h5 == 0) return Status::io(path + ": not an HDF5 file; an image shard is written by write_shard (" + kDocs + ")");
  ShardReader r;
  r.path_ = path;
  r.file_ = Handle(H5Fopen(path.c_str(), H5F_ACC_RDONLY, H5P_DEFAULT));
  if (!r.file_.valid())
    return Status::io(path + ": H5Fopen failed (" + h5_detail() +
                      "); the shard is truncated or corrupt, regenerate it (" + kDocs + ")");
  const hid_t f = r.file_.get();

  auto has_format = exists(f, "format", true, path);
  if (!has_format) return has_format.status();
  if (!*has_format)
    return Status::io(path + ": no 'format' attribute; not a mobula image shard (" + std::string(kDocs) + ")");
  auto format = read_str_attr(f, "format", path);
  if (!format) return format.status();
  if (*format != kShardFormat)
    return Status::io(path + ": attribute format is '" + *format + "', expected '" + kShardFormat +
                      "'; not a mobula image shard (" + kDocs + ")");
  uint64_t attrs[3] = {0, 0, 0};
  const char* const names[3] = {"version", "count", "first_index"};
  for (int i = 0; i < 3; ++i) {
    auto e = exists(f, names[i], true, path);
    if (!e) return e.status();
    if (!*e) return missing_attr(path, names[i]);
    auto v = read_uint_attr(f, names[i], path);
    if (!v) return v.status();
    attrs[i] = *v;
  }
  if (attrs[0] != uint64_t(kShardVersion))
    return Status::io(path + ": shard format version " + std::to_string(attrs[0]) + ", this mobula reads version " +
                      std::to_string(kShardVersion) + "; regenerate the shard or update mobula");
  const uint64_t count = attrs[1];
  r.first_index_ = attrs[2];
  if (r.first_index_ > UINT64_MAX - count)
    return Status::io(path + ": first_index + count overflows 64 bits; the shard is corrupt (" + kDocs + ")");
  for (const char* name : {"encoding", "generator"}) {
    auto e = exists(f, name, true, path);
    if (!e) return e.status();
    if (!*e) {
      if (std::strcmp(name, "encoding") == 0) return missing_attr(path, name);
      continue;  // generator is informational
    }
    auto v = read_str_attr(f, name, path);
    if (!v) return v.status();
    (std::strcmp(name, "encoding") == 0 ? r.encoding_ : r.generator_) = *v;
  }
  if (r.encoding_ != "png" && r.encoding_ != "jpeg")
    return Status::io(path + ": attribute encoding is '" + r.encoding_ + "', expected 'png' or 'jpeg' (" + kDocs + ")");

  // /data: 1-D uint8, stays open for the per-sample reads.
  hsize_t data_size = 0;
  auto data = open_1d(f, "data", path, &data_size);
  if (!data) return data.status();
  {
    MOBULA_H5_ID(type, H5Dget_type(data->get()), path + ":/data");
    if (H5Tget_size(type.get()) != 1 || H5Tget_sign(type.get()) != H5T_SGN_NONE)
      return Status::io(path + ": dataset /data is not uint8; the shard is corrupt (" + std::string(kDocs) + ")");
  }
  r.data_ = std::move(*data);
  if (count > (uint64_t(1) << 40))
    return Status::io(path + ": attribute count = " + std::to_string(count) + " is implausible; the shard is corrupt");
  MOBULA_RETURN_IF_ERROR(read_index(f, "offsets", H5T_NATIVE_UINT64, count + 1, path, &r.offsets_));
  MOBULA_RETURN_IF_ERROR(read_index(f, "labels", H5T_NATIVE_INT32, count, path, &r.labels_));
  for (const char* name : {"width", "height"}) {
    auto e = exists(f, name, false, path);
    if (!e) return e.status();
    if (*e)
      MOBULA_RETURN_IF_ERROR(read_index(f, name, H5T_NATIVE_INT32, count, path,
                                        std::strcmp(name, "width") == 0 ? &r.widths_ : &r.heights_));
  }
  if (r.offsets_[0] != 0)
    return Status::io(path + ": /offsets[0] = " + std::to_string(r.offsets_[0]) +
                      ", expected 0; the shard is corrupt, regenerate it (" + kDocs + ")");
  for (uint64_t i = 0; i < count; ++i) {
    if (r.offsets_[i + 1] <= r.offsets_[i])
      return Status::io(path + ": /offsets is not increasing at sample " + std::to_string(i) + " (" +
                        std::to_string(r.offsets_[i]) + " then " + std::to_string(r.offsets_[i + 1]) +
                        "); the shard is corrupt, regenerate it (" + kDocs + ")");
    if (r.offsets_[i + 1] > data_size)
      return Status::io(path + ": /offsets[" + std::to_string(i + 1) + "] = " + std::to_string(r.offsets_[i + 1]) +
                        " is past the end of /data (" + std::to_string(data_size) +
                        " bytes); the shard is truncated or corrupt, regenerate it (" + kDocs + ")");
  }
  if (r.offsets_[count] != data_size)
    return Status::io(path + ": /offsets ends at " + std::to_string(r.offsets_[count]) + " but /data holds " +
                      std::to_string(data_size) + " bytes; the shard is corrupt, regenerate it (" + kDocs + ")");
  return r;
}

Result<std::vector<uint8_t>> ShardReader::read(uint64_t i) {
  if (i >= count())
    return Status::invalid_argument(path_ + ": sample " + std::to_string(i) + " out of range; the shard holds " +
                                    std::to_string(count()) + " samples");
  const std::string what = path_ + ":/data";
  hsize_t off[1] = {offsets_[i]}, cnt[1] = {offsets_[i + 1] - offsets_[i]};
  MOBULA_H5_ID(fspace, H5Dget_space(data_.get()), what);
  MOBULA_H5(H5Sselect_hyperslab(fspace.get(), H5S_SELECT_SET, off, nullptr, cnt, nullptr), what);
  MOBULA_H5_ID(mspace, H5Screate_simple(1, cnt, nullptr), what);
  std::vector<uint8_t> out(cnt[0]);
  MOBULA_H5(H5Dread(data_.get(), H5T_NATIVE_UINT8, mspace.get(), fspace.get(), H5P_DEFAULT, out.data()), what);
  return out;
}

std::string shard_file_name(uint64_t k) {
  char buf[40];
  std::snprintf(buf, sizeof buf, "shard-%05llu.h5", static_cast<unsigned long long>(k));
  return buf;
}

Result<ImageDataset> ImageDataset::open(const std::string& dir) {
  std::error_code ec;
  if (!fs::is_directory(dir, ec))
    return Status::not_found(dir +
                             ": no such dataset directory; check the path, or create one with "
                             "generate_synthetic_dataset (" +
                             kDocs + ")");
  std::vector<std::pair<uint64_t, std::string>> files;
  for (const auto& e : fs::directory_iterator(dir, ec)) {
    uint64_t k = 0;
    if (shard_number(e.path().filename().string(), &k)) files.emplace_back(k, e.path().string());
  }
  if (ec) return Status::io(dir + ": cannot list: " + ec.message());
  if (files.empty())
    return Status::not_found(dir + ": no shard-NNNNN.h5 files; generate the dataset first (" + std::string(kDocs) +
                             ")");
  std::sort(files.begin(), files.end());
  ImageDataset d;
  d.dir_ = dir;
  for (const auto& [k, file] : files) {
    auto r = ShardReader::open(file);
    if (!r) return r.status();
    d.shards_.push_back(std::move(*r));
  }
  std::stable_sort(d.shards_.begin(), d.shards_.end(),
                   [](const ShardReader& a, const ShardReader& b) { return a.first_index() < b.first_index(); });
  uint64_t next = 0;
  std::string prev;
  for (const auto& s : d.shards_) {
    const std::string name = fs::path(s.path()).filename().string();
    if (s.first_index() > next)
      return Status::io(dir + ": gap in the global indices: samples " + std::to_string(next) + ".." +
                        std::to_string(s.first_index() - 1) + " are in no shard (" + name + " starts at " +
                        std::to_string(s.first_index()) +
                        (prev.empty() ? ", and no shard starts at 0"
                                      : ", " + prev + " ends with sample " + std::to_string(next - 1)) +
                        "); restore the missing shard or regenerate the dataset");
    if (s.first_index() < next)
      return Status::io(dir + ": overlapping shards: " + name + " starts at " + std::to_string(s.first_index()) +
                        " but " + prev + " already covers up to " + std::to_string(next - 1) +
                        "; remove the stale shard or regenerate the dataset");
    next = s.first_index() + s.count();
    prev = name;
  }
  d.size_ = next;
  return d;
}

long ImageDataset::find(uint64_t g) const {
  if (g >= size_) return -1;
  auto it = std::upper_bound(shards_.begin(), shards_.end(), g,
                             [](uint64_t v, const ShardReader& s) { return v < s.first_index(); });
  return static_cast<long>(it - shards_.begin()) - 1;
}

Result<std::vector<uint8_t>> ImageDataset::read(uint64_t global_index) {
  const long k = find(global_index);
  if (k < 0)
    return Status::invalid_argument(dir_ + ": index " + std::to_string(global_index) +
                                    " out of range; the dataset holds " + std::to_string(size_) + " samples");
  ShardReader& s = shards_[size_t(k)];
  return s.read(global_index - s.first_index());
}

int32_t ImageDataset::label(uint64_t global_index) const {
  const long k = find(global_index);
  if (k < 0) return -1;
  const ShardReader& s = shards_[size_t(k)];
  return s.label(global_index - s.first_index());
}

Status generate_synthetic_dataset(const std::string& dir, uint64_t count, uint64_t per_shard, int size, uint64_t seed,
                                  const std::string& encoding) {
  if (count == 0 || per_shard == 0)
    return Status::invalid_argument(dir + ": count and per_shard must be positive (got " + std::to_string(count) +
                                    ", " + std::to_string(per_shard) + ")");
  if (size < kSynthMinSize || size > kSynthMaxSize)
    return Status::invalid_argument(dir + ": image size " + std::to_string(size) + " outside [" +
                                    std::to_string(kSynthMinSize) + ", " + std::to_string(kSynthMaxSize) + "]");
  if (encoding != "png" && encoding != "jpeg")
    return Status::invalid_argument(dir + ": encoding '" + encoding + "'; use \"png\" or \"jpeg\"");
  constexpr int kQuality = 90;
  const uint64_t shards = (count + per_shard - 1) / per_shard;
  std::string generator = "synth seed=" + std::to_string(seed) + " size=" + std::to_string(size) +
                          " classes=disc,square,triangle,ring encoding=" + encoding;
  if (encoding == "jpeg") generator += " quality=" + std::to_string(kQuality);
  nlohmann::ordered_json desc = {{"format", "mobula-image-dataset"},
                                 {"version", 1},
                                 {"generator", generator},
                                 {"seed", seed},
                                 {"count", count},
                                 {"per_shard", per_shard},
                                 {"shards", shards},
                                 {"size", size},
                                 {"channels", 3},
                                 {"encoding", encoding},
                                 {"classes", {"disc", "square", "triangle", "ring"}},
                                 {"shard_files", "shard-NNNNN.h5"}};
  if (encoding == "jpeg") desc["jpeg_quality"] = kQuality;

  std::error_code ec;
  fs::create_directories(dir, ec);
  if (ec) return Status::io(dir + ": cannot create the directory: " + ec.message());
  const fs::path json_path = fs::path(dir) / "dataset.json";
  if (fs::exists(json_path, ec)) {
    std::ifstream in(json_path);
    std::stringstream ss;
    ss << in.rdbuf();
    const auto old = nlohmann::ordered_json::parse(ss.str(), nullptr, false);
    if (!old.is_discarded() && old == desc) return Status::ok();  // already generated, same parameters
    return Status::invalid_argument(json_path.string() + ": the directory holds a different dataset (" +
                                    (old.is_discarded() ? std::string("unreadable dataset.json") : old.dump()) +
                                    "); remove it or choose another directory");
  }
  for (const auto& e : fs::directory_iterator(dir, ec)) {
    uint64_t k = 0;
    if (shard_number(e.path().filename().string(), &k))
      return Status::invalid_argument(dir + ": holds shard files (" + e.path().filename().string() +
                                      ") but no dataset.json (an interrupted or foreign dataset); remove them or "
                                      "choose another directory");
  }
  for (uint64_t k = 0; k < shards; ++k) {
    const uint64_t first = k * per_shard, n = std::min(per_shard, count - first);
    std::vector<std::vector<uint8_t>> enc(n);
    std::vector<int32_t> labels(n);
    for (uint64_t j = 0; j < n; ++j) {
      int label = 0;
      const Image im = synth_image(seed, first + j, size, &label);
      auto bytes = encoding == "png" ? encode_png(im) : encode_jpeg(im, kQuality);
      if (!bytes) return Status::io(dir + ": sample " + std::to_string(first + j) + ": " + bytes.status().message());
      enc[j] = std::move(*bytes);
      labels[j] = label;
    }
    MOBULA_RETURN_IF_ERROR(
        write_shard((fs::path(dir) / shard_file_name(k)).string(), first, enc, labels, encoding, generator));
  }
  return write_file_atomically(json_path, desc.dump(2) + "\n", true);
}

}  // namespace mobula::io
