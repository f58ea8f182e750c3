/* Near or far: an IntersectionObserver that tells which elements are within `margin` of a scroll
 * root, so pages and thumbnails hold images (and text layers) only while someone could see them. */
export function nearness(root, margin, onNear, onFar) {
  const io = new IntersectionObserver((entries) => {
    entries.forEach((e) => (e.isIntersecting ? onNear : onFar)(e.target));
  }, { root: root || null, rootMargin: margin });
  return io;
}
