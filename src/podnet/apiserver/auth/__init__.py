"""Who is asking, and may they: authentication, authorization and the identity admission.

What belongs here (upstream's `staging/src/k8s.io/apiserver/pkg/authentication|authorization`,
`plugin/pkg/auth/authorizer/{rbac,node}` and `plugin/pkg/admission/{serviceaccount,
noderestriction}` are the models):
- `user.py`: `UserInfo` and the well-known users and groups;
- `tokens.py`: the server's signing key (`sa.key` in the state dir) and the JWTs it signs:
  bound ServiceAccount tokens (TokenRequest) and node credentials;
- `authn.py`: authenticators (the admin token, ServiceAccount JWTs, node JWTs) in a union;
  a later bootstrap-token authenticator (`system:bootstrappers`) is one more entry there;
- `attributes.py`: a request's authorization attributes (verb, resource, ...) and upstream's
  403 message;
- `rbac.py`: the RBAC authorizer over an index of Roles/ClusterRoles/bindings kept by a watch;
- `node.py`: the Node authorizer (a node reads only what its pods use) and NodeRestriction;
- `bootstrappolicy.py`: the default ClusterRoles and bindings every cluster has;
- `chain.py`: `Auth`, what the HTTP layer calls (authenticate, authorize, admit);
- `reviews.py`: TokenReview, SubjectAccessReview, SelfSubjectAccessReview,
  SelfSubjectRulesReview and SelfSubjectReview.
In-process callers (controllers through `LocalApi`) never pass through here: they are the
server itself, as upstream's loopback client with `system:masters` is.
"""
