//! Kafka error codes the broker answers with.

/// A Kafka protocol error code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[repr(i16)]
#[allow(missing_docs)]
pub enum Code {
    None = 0,
    OffsetOutOfRange = 1,
    CorruptMessage = 2,
    UnknownTopicOrPartition = 3,
    LeaderNotAvailable = 5,
    NotLeaderOrFollower = 6,
    RequestTimedOut = 7,
    MessageTooLarge = 10,
    CoordinatorNotAvailable = 15,
    NotCoordinator = 16,
    InvalidTopicException = 17,
    InvalidRequiredAcks = 21,
    IllegalGeneration = 22,
    InconsistentGroupProtocol = 23,
    InvalidGroupId = 24,
    UnknownMemberId = 25,
    InvalidSessionTimeout = 26,
    RebalanceInProgress = 27,
    UnsupportedVersion = 35,
    TopicAlreadyExists = 36,
    InvalidPartitions = 37,
    InvalidReplicationFactor = 38,
    InvalidConfig = 40,
    NotController = 41,
    InvalidRequest = 42,
    UnsupportedForMessageFormat = 43,
    OutOfOrderSequenceNumber = 45,
    DuplicateSequenceNumber = 46,
    InvalidProducerEpoch = 47,
    KafkaStorageError = 56,
    UnknownProducerId = 59,
    NonEmptyGroup = 68,
    GroupIdNotFound = 69,
    MemberIdRequired = 79,
    GroupMaxSizeReached = 81,
    InvalidRecord = 87,
    UnknownTopicId = 100,
    // Added later, so after the rest: stored outcomes (postcard) name a code by its place
    // in this list, not by its wire value.
    InvalidReplicaAssignment = 39,
    PolicyViolation = 44,
    GroupSubscribedToTopic = 86,
    InvalidTxnState = 48,
    InvalidProducerIdMapping = 49,
    InvalidTransactionTimeout = 50,
    ConcurrentTransactions = 51,
    OperationNotAttempted = 55,
    UnstableOffsetCommit = 88,
    ProducerFenced = 90,
    TransactionalIdNotFound = 105,
    TopicAuthorizationFailed = 29,
    GroupAuthorizationFailed = 30,
    ClusterAuthorizationFailed = 31,
    UnsupportedSaslMechanism = 33,
    IllegalSaslState = 34,
    TransactionalIdAuthorizationFailed = 53,
    SaslAuthenticationFailed = 58,
}

impl Code {
    /// The wire value.
    pub fn code(self) -> i16 {
        self as i16
    }
}

#[cfg(test)]
mod tests {
    use super::Code;

    /// Refusals are stored (a metadata outcome in a Raft log is postcard, which names a
    /// variant by its place): a code added in the middle would change what stored ones mean.
    #[test]
    fn stored_codes_keep_their_places() {
        let place = |c: Code| postcard::to_allocvec(&c).unwrap();
        assert_eq!(place(Code::None), [0]);
        assert_eq!(place(Code::TopicAlreadyExists), [19]);
        assert_eq!(place(Code::InvalidRequest), [24]);
        assert_eq!(place(Code::UnknownTopicId), [36]);
        assert_eq!(place(Code::GroupSubscribedToTopic), [39]);
    }
}
