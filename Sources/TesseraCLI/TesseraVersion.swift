/// The version `tessera --version` prints.
enum TesseraVersion {
    static let string = "0.3.0-dev"
}
