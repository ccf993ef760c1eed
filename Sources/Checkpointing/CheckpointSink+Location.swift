import Foundation

extension CheckpointSink {
    /// Where this sink's checkpoints live, for messages ("resumed from step 8 of ...").
    public var location: String {
        switch self {
        case let directory as DirectoryCheckpointSink: return directory.root.path
        case let service as ServiceCheckpointSink: return "the checkpoint service at \(service.address)"
        default: return String(describing: type(of: self))
        }
    }
}
