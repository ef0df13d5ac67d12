#include "io/image_codecs.h"

#include <cstdio>  // before jpeglib.h, which uses FILE and size_t

#include <jpeglib.h>
#include <png.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <csetjmp>
#include <cstdlib>
#include <cstring>

namespace mobula::io {

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

}  // namespace mobula::io
