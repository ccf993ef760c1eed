/// "Did you mean" hints for unknown config keys.
enum KeySuggestion {
    /// The known key closest to `path` by edit distance. A path without a section
    /// ("steps") is compared with the key part of each path, so it suggests "train.steps".
    static func nearest(to path: String) -> String {
        let candidates = ConfigField.all
        let distance: (ConfigField) -> Int = path.contains(".")
            ? { editDistance($0.path, path) }
            : { editDistance($0.key, path) }
        return candidates.min { distance($0) < distance($1) }!.path
    }

    /// Levenshtein distance of two strings (by Character).
    static func editDistance(_ a: String, _ b: String) -> Int {
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
