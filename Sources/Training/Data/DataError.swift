import Foundation

/// Why data could not be used; each names the file or directory and what to do.
public struct DataError: Error, Equatable, CustomStringConvertible {
    public var description: String
    public init(_ description: String) { self.description = description }
}
