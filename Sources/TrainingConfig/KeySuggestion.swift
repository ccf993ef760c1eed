/// "Did you mean" hints for unknown config keys.
enum KeySuggestion {
    /// The known key closest to `path` by edit distance. A path without a section
    /// ("steps") is compared with the key part of each path, so it suggests "train.steps".
    static func nearest(to path: String) -> String {
        let fields = ConfigField.all
        guard !path.contains(".") else { return NearestWord.nearest(to: path, among: fields.map(\.path))! }
        let key = NearestWord.nearest(to: path, among: fields.map(\.key))!
        return fields.first { $0.key == key }!.path
    }
}
