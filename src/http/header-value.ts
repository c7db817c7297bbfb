// A header value may not carry control characters (CR/LF would split the message); tab may.
export function headerSafe (text: string): boolean {
  for (let i = 0; i < text.length; i++) {
    const c = text.charCodeAt(i)
    if ((c < 32 && c !== 9) || c === 127) return false
  }
  return true
}
