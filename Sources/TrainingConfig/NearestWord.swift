/// "Did you mean" hints: the candidate closest to a mistyped word.
public enum NearestWord {
    /// The candidate with the smallest edit distance to `word` (the first of equals); nil when
    /// there are no candidates.
    public static func nearest(to word: String, among candidates: [String]) -> String? {
        candidates.min { editDistance($0, word) < editDistance($1, word) }
    }

    /// Levenshtein distance of two strings (by Character).
    public static func editDistance(_ a: String, _ b: String) -> Int {
        let a = Array(a), b = Array(b)
        guard !a.isEmpty else { return b.count }
        guard !b.isEmpty else { return a.count }
        var row = Array(0...b.count)
        for i in 1...a.count {
            var previous = row[0]
            row[0] = i
            for j in 1...b.count {
                let current = row[j]
                row[j] = min(row[j] + 1, row[j - 1] + 1, previous + (a[i - 1] == b[j - 1] ? 0 : 1))
                previous = current
            }
        }
        return row[b.count]
    }
}
