import Foundation

/// Where the jobs a client submits to the checkpoint service may read (teachers, soup
/// ingredients, token data): under the service's root, or under a directory the service was
/// started with (`tessera ckpt serve --allow-path DIR`). Paths are resolved (`..`, symlinks)
/// before they are compared, and a path outside is refused with the same words whether it
/// exists or not, so a client learns nothing about the service's file system.
public struct ServicePaths: Sendable {
    /// The resolved directories a job may read under; the root first.
    public let allowed: [URL]

    public init(root: URL, allowing directories: [String] = []) {
        allowed = ([root] + directories.map { URL(fileURLWithPath: $0) }).map(Self.resolved)
    }

    /// `path` (relative paths are taken under the root) resolved, when it lies under an allowed
    /// directory; otherwise `pathNotAllowed` naming `what` and the path as the client wrote it.
    public func check(_ path: String, what: String) throws -> URL {
        let url = Self.resolved(path.hasPrefix("/") ? URL(fileURLWithPath: path) : allowed[0].appendingPathComponent(path))
        let components = url.pathComponents
        guard allowed.contains(where: { components.starts(with: $0.pathComponents) }) else {
            throw CheckpointServiceError.pathNotAllowed(what: what, path: path)
        }
        return url
    }

    static func resolved(_ url: URL) -> URL { url.standardizedFileURL.resolvingSymlinksInPath() }
}
