//! MCP methods as a closed enum, so metric labels, routing and policy never match on free strings.

/// A JSON-RPC method the gateway knows by name; everything else is `Other` (and still forwarded).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Method {
    Initialize,
    Ping,
    ToolsList,
    ToolsCall,
    ResourcesList,
    ResourcesTemplatesList,
    ResourcesRead,
    ResourcesSubscribe,
    ResourcesUnsubscribe,
    PromptsList,
    PromptsGet,
    CompletionComplete,
    LoggingSetLevel,
    ServerDiscover,
    SubscriptionsListen,
    TasksGet,
    TasksResult,
    TasksCancel,
    TasksList,
    NotificationsInitialized,
    NotificationsCancelled,
    NotificationsProgress,
    NotificationsRootsListChanged,
    OtherNotification,
    Other,
}

impl Method {
    /// Requests that change nothing on the server (reads and lists), so sending one twice is
    /// harmless: an upstream connection that closed before any byte of the reply may be retried.
    pub const fn idempotent(self) -> bool {
        matches!(
            self,
            Self::Ping
                | Self::ToolsList
                | Self::ResourcesList
                | Self::ResourcesTemplatesList
                | Self::ResourcesRead
                | Self::PromptsList
                | Self::PromptsGet
                | Self::CompletionComplete
                | Self::ServerDiscover
                | Self::TasksGet
                | Self::TasksList
        )
    }

    /// Every variant, in label order (used to pre-resolve per-method metric handles).
    pub const ALL: [Method; 25] = [
        Self::Initialize,
        Self::Ping,
        Self::ToolsList,
        Self::ToolsCall,
        Self::ResourcesList,
        Self::ResourcesTemplatesList,
        Self::ResourcesRead,
        Self::ResourcesSubscribe,
        Self::ResourcesUnsubscribe,
        Self::PromptsList,
        Self::PromptsGet,
        Self::CompletionComplete,
        Self::LoggingSetLevel,
        Self::ServerDiscover,
        Self::SubscriptionsListen,
        Self::TasksGet,
        Self::TasksResult,
        Self::TasksCancel,
        Self::TasksList,
        Self::NotificationsInitialized,
        Self::NotificationsCancelled,
        Self::NotificationsProgress,
        Self::NotificationsRootsListChanged,
        Self::OtherNotification,
        Self::Other,
    ];

    pub fn parse(s: &str) -> Method {
        match s {
            "initialize" => Self::Initialize,
            "ping" => Self::Ping,
            "tools/list" => Self::ToolsList,
            "tools/call" => Self::ToolsCall,
            "resources/list" => Self::ResourcesList,
            "resources/templates/list" => Self::ResourcesTemplatesList,
            "resources/read" => Self::ResourcesRead,
            "resources/subscribe" => Self::ResourcesSubscribe,
            "resources/unsubscribe" => Self::ResourcesUnsubscribe,
            "prompts/list" => Self::PromptsList,
            "prompts/get" => Self::PromptsGet,
            "completion/complete" => Self::CompletionComplete,
            "logging/setLevel" => Self::LoggingSetLevel,
            "server/discover" => Self::ServerDiscover,
            "subscriptions/listen" => Self::SubscriptionsListen,
            "tasks/get" => Self::TasksGet,
            "tasks/result" => Self::TasksResult,
            "tasks/cancel" => Self::TasksCancel,
            "tasks/list" => Self::TasksList,
            "notifications/initialized" => Self::NotificationsInitialized,
            "notifications/cancelled" => Self::NotificationsCancelled,
            "notifications/progress" => Self::NotificationsProgress,
            "notifications/roots/list_changed" => Self::NotificationsRootsListChanged,
            s if s.starts_with("notifications/") => Self::OtherNotification,
            _ => Self::Other,
        }
    }

    /// Bounded label value for metrics and logs.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Initialize => "initialize",
            Self::Ping => "ping",
            Self::ToolsList => "tools/list",
            Self::ToolsCall => "tools/call",
            Self::ResourcesList => "resources/list",
            Self::ResourcesTemplatesList => "resources/templates/list",
            Self::ResourcesRead => "resources/read",
            Self::ResourcesSubscribe => "resources/subscribe",
            Self::ResourcesUnsubscribe => "resources/unsubscribe",
            Self::PromptsList => "prompts/list",
            Self::PromptsGet => "prompts/get",
            Self::CompletionComplete => "completion/complete",
            Self::LoggingSetLevel => "logging/setLevel",
            Self::ServerDiscover => "server/discover",
            Self::SubscriptionsListen => "subscriptions/listen",
            Self::TasksGet => "tasks/get",
            Self::TasksResult => "tasks/result",
            Self::TasksCancel => "tasks/cancel",
            Self::TasksList => "tasks/list",
            Self::NotificationsInitialized => "notifications/initialized",
            Self::NotificationsCancelled => "notifications/cancelled",
            Self::NotificationsProgress => "notifications/progress",
            Self::NotificationsRootsListChanged => "notifications/roots/list_changed",
            Self::OtherNotification => "notifications/other",
            Self::Other => "other",
        }
    }

    /// The position in `ALL`, which lists the variants in declaration order (a test checks;
    /// `Other` stays last, and `ALL` holds every variant: checked when compiled).
    #[inline]
    pub const fn index(self) -> usize {
        self as usize
    }
}

// `index` is the discriminant: `ALL` must hold every variant, `Other` last.
const _: () = assert!(Method::Other as usize + 1 == Method::ALL.len());

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_round_trip_and_index_is_stable() {
        for (i, m) in Method::ALL.iter().enumerate() {
            assert_eq!(m.index(), i);
            if !matches!(m, Method::OtherNotification | Method::Other) {
                assert_eq!(Method::parse(m.as_str()), *m);
            }
        }
        assert_eq!(
            Method::parse("notifications/message"),
            Method::OtherNotification
        );
        assert_eq!(Method::parse("tools/call "), Method::Other);
    }
}
