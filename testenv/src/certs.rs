//! Certificates for one control plane: a CA that signs the kube-apiserver's serving
//! certificate and the client certificates of the admin and of kube-controller-manager, plus
//! the service-account signing keys.

use anyhow::Result;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};

/// PEM-encoded material; nothing here outlives the control plane it was made for.
pub(crate) struct Pki {
    pub ca_cert: String,
    pub serving_cert: String,
    pub serving_key: String,
    pub admin_cert: String,
    pub admin_key: String,
    /// `CN=system:kube-controller-manager`, no group: the user the default RBAC policy binds
    /// to the role `system:kube-controller-manager`, as on a real control plane.
    pub controller_manager_cert: String,
    pub controller_manager_key: String,
    pub service_account_key: String,
    pub service_account_pub: String,
}

pub(crate) fn generate() -> Result<Pki> {
    let ca_key = KeyPair::generate()?;
    let mut ca_params = CertificateParams::default();
    ca_params.distinguished_name = name("cyclr-testenv-ca", None);
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let ca_cert = ca_params.self_signed(&ca_key)?;
    let ca = Issuer::new(ca_params, ca_key);

    let serving_key = KeyPair::generate()?;
    let mut serving = CertificateParams::new(vec![
        "127.0.0.1".to_owned(),
        "localhost".to_owned(),
        "kubernetes.default.svc".to_owned(),
    ])?;
    serving.distinguished_name = name("kube-apiserver", None);
    serving.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    serving.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    serving.use_authority_key_identifier_extension = true;
    let serving_cert = serving.signed_by(&serving_key, &ca)?;

    // Membership of system:masters is what makes this user an admin under RBAC.
    let (admin_cert, admin_key) = client_cert(&ca, name("cyclr-testenv-admin", Some("system:masters")))?;
    let (controller_manager_cert, controller_manager_key) =
        client_cert(&ca, name("system:kube-controller-manager", None))?;

    let service_account = KeyPair::generate()?;
    Ok(Pki {
        ca_cert: ca_cert.pem(),
        serving_cert: serving_cert.pem(),
        serving_key: serving_key.serialize_pem(),
        admin_cert,
        admin_key,
        controller_manager_cert,
        controller_manager_key,
        service_account_key: service_account.serialize_pem(),
        service_account_pub: service_account.public_key_pem(),
    })
}

/// A client certificate for `subject`, signed by `ca`: (certificate, key), PEM.
fn client_cert(ca: &Issuer<'_, KeyPair>, subject: DistinguishedName) -> Result<(String, String)> {
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::default();
    params.distinguished_name = subject;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    params.use_authority_key_identifier_extension = true;
    let cert = params.signed_by(&key, ca)?;
    Ok((cert.pem(), key.serialize_pem()))
}

fn name(common_name: &str, organization: Option<&str>) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, common_name);
    if let Some(org) = organization {
        dn.push(DnType::OrganizationName, org);
    }
    dn
}
