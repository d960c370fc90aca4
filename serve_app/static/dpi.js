// The DPI written in an image file, read in the browser: JPEG (JFIF, else EXIF) and PNG (pHYs).

export function readDpi(buf) {
  const v = new DataView(buf);
  if (v.byteLength > 24 && v.getUint32(0) === 0x89504e47) {  // PNG: chunks after the signature
    for (let p = 8; p + 12 <= v.byteLength;) {
      const len = v.getUint32(p), type = v.getUint32(p + 4);
      if (type === 0x70485973 && v.getUint8(p + 16) === 1) return Math.round(v.getUint32(p + 8) * 0.0254);
      if (type === 0x49444154) return null;  // IDAT: pHYs comes before it
      p += 12 + len;
    }
    return null;
  }
  if (v.byteLength < 4 || v.getUint16(0) !== 0xffd8) return null;
  let exif = null;
  for (let p = 2; p + 4 <= v.byteLength;) {
    const marker = v.getUint16(p), len = v.getUint16(p + 2);
    if (marker === 0xffe0 && v.getUint32(p + 4) === 0x4a464946) {  // APP0 "JFIF"
      const units = v.getUint8(p + 11), x = v.getUint16(p + 12);
      if (units === 1) return x;
      if (units === 2) return Math.round(x * 2.54);
    } else if (marker === 0xffe1 && v.getUint32(p + 4) === 0x45786966) {  // APP1 "Exif"
      exif = exifDpi(v, p + 10);
    } else if (marker === 0xffda) break;  // image data: no more headers
    p += 2 + len;
  }
  return exif;
}

function exifDpi(v, tiff) {
  try {
    const le = v.getUint16(tiff) === 0x4949;
    const u16 = (o) => v.getUint16(tiff + o, le), u32 = (o) => v.getUint32(tiff + o, le);
    const ifd = u32(4), count = u16(ifd);
    let res = null, unit = 2;
    for (let i = 0; i < count; i++) {
      const e = ifd + 2 + i * 12, tag = u16(e);
      if (tag === 0x011a) { const o = u32(e + 8); res = u32(o) / (u32(o + 4) || 1); }
      if (tag === 0x0128) unit = u16(e + 8);
    }
    if (!res) return null;
    return Math.round(unit === 3 ? res * 2.54 : res);
  } catch { return null; }
}
