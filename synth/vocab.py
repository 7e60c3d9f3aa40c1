"""UI text for the synthetic pages, in six languages.

Each table row holds one concept in every language of `LANGUAGES`, in that order, so a page
can be written in German while the task text (in English, as the released model's prompts
are) still knows what the German word means: row i of `BUTTONS` is the same button in every
language. Names, cities and numbers are language-neutral and live in plain lists.
"""

from __future__ import annotations

from typing import Literal

Language = Literal["en", "de", "fr", "es", "zh", "ja"]
LANGUAGES: tuple[Language, ...] = ("en", "de", "fr", "es", "zh", "ja")

Row = tuple[str, str, str, str, str, str]


def word(row: Row, language: Language) -> str:
    """The text of `row` in `language`."""
    return row[LANGUAGES.index(language)]


NAV: list[Row] = [
    ("Home", "Startseite", "Accueil", "Inicio", "首页", "ホーム"),
    ("Products", "Produkte", "Produits", "Productos", "产品", "製品"),
    ("Pricing", "Preise", "Tarifs", "Precios", "价格", "料金"),
    ("About", "Über uns", "À propos", "Acerca de", "关于我们", "会社概要"),
    ("Contact", "Kontakt", "Contact", "Contacto", "联系我们", "お問い合わせ"),
    ("Blog", "Blog", "Blog", "Blog", "博客", "ブログ"),
    ("Help", "Hilfe", "Aide", "Ayuda", "帮助", "ヘルプ"),
    ("Careers", "Karriere", "Carrières", "Empleo", "招聘", "採用情報"),
    ("News", "Neuigkeiten", "Actualités", "Noticias", "新闻", "ニュース"),
    ("Docs", "Doku", "Docs", "Documentos", "文档", "ドキュメント"),
]

TITLES: list[Row] = [
    ("Account settings", "Kontoeinstellungen", "Paramètres du compte", "Ajustes de la cuenta", "账户设置", "アカウント設定"),
    ("Order history", "Bestellverlauf", "Historique des commandes", "Historial de pedidos", "订单历史", "注文履歴"),
    ("Team dashboard", "Team-Übersicht", "Tableau de bord", "Panel del equipo", "团队面板", "チームダッシュボード"),
    ("Support center", "Hilfecenter", "Centre d'assistance", "Centro de soporte", "支持中心", "サポートセンター"),
    ("Project overview", "Projektübersicht", "Aperçu du projet", "Resumen del proyecto", "项目概览", "プロジェクト概要"),
    ("Shipping details", "Versanddetails", "Détails de livraison", "Datos de envío", "配送信息", "配送情報"),
    ("Create account", "Konto erstellen", "Créer un compte", "Crear cuenta", "创建账户", "アカウント作成"),
    ("Inbox", "Posteingang", "Boîte de réception", "Bandeja de entrada", "收件箱", "受信トレイ"),
    ("Billing", "Abrechnung", "Facturation", "Facturación", "账单", "請求"),
    ("Event booking", "Veranstaltung buchen", "Réservation", "Reservar evento", "活动预订", "イベント予約"),
]

BUTTONS: list[Row] = [
    ("Save", "Speichern", "Enregistrer", "Guardar", "保存", "保存"),
    ("Delete", "Löschen", "Supprimer", "Eliminar", "删除", "削除"),
    ("Edit", "Bearbeiten", "Modifier", "Editar", "编辑", "編集"),
    ("Share", "Teilen", "Partager", "Compartir", "分享", "共有"),
    ("Download", "Herunterladen", "Télécharger", "Descargar", "下载", "ダウンロード"),
    ("Export", "Exportieren", "Exporter", "Exportar", "导出", "エクスポート"),
    ("Refresh", "Aktualisieren", "Actualiser", "Actualizar", "刷新", "更新"),
    ("Add item", "Hinzufügen", "Ajouter", "Añadir", "添加", "追加"),
    ("Upload", "Hochladen", "Importer", "Subir", "上传", "アップロード"),
    ("Print", "Drucken", "Imprimer", "Imprimir", "打印", "印刷"),
    ("Archive", "Archivieren", "Archiver", "Archivar", "归档", "アーカイブ"),
    ("Duplicate", "Duplizieren", "Dupliquer", "Duplicar", "复制", "複製"),
]

FIELDS: list[Row] = [
    ("Full name", "Vollständiger Name", "Nom complet", "Nombre completo", "姓名", "氏名"),
    ("Email", "E-Mail", "E-mail", "Correo", "电子邮件", "メール"),
    ("Phone", "Telefon", "Téléphone", "Teléfono", "电话", "電話番号"),
    ("City", "Stadt", "Ville", "Ciudad", "城市", "市区町村"),
    ("Company", "Firma", "Entreprise", "Empresa", "公司", "会社名"),
    ("Address", "Adresse", "Adresse postale", "Dirección", "地址", "住所"),
    ("Subject", "Betreff", "Objet", "Asunto", "主题", "件名"),
    ("Zip code", "Postleitzahl", "Code postal", "Código postal", "邮编", "郵便番号"),
]

CHECKBOXES: list[Row] = [
    ("Remember me", "Angemeldet bleiben", "Se souvenir de moi", "Recordarme", "记住我", "ログイン状態を保持"),
    ("Subscribe to newsletter", "Newsletter abonnieren", "S'abonner à la newsletter", "Suscribirse al boletín", "订阅新闻", "ニュースレターを購読"),
    ("I accept the terms", "Ich akzeptiere die AGB", "J'accepte les conditions", "Acepto los términos", "我接受条款", "利用規約に同意"),
    ("Enable notifications", "Benachrichtigungen aktivieren", "Activer les notifications", "Activar notificaciones", "启用通知", "通知を有効にする"),
    ("Dark mode", "Dunkelmodus", "Mode sombre", "Modo oscuro", "深色模式", "ダークモード"),
    ("Show archived", "Archivierte anzeigen", "Afficher les archives", "Mostrar archivados", "显示已归档", "アーカイブを表示"),
    ("Email receipts", "Belege per E-Mail", "Reçus par e-mail", "Recibos por correo", "邮件收据", "領収書をメール送信"),
    ("Public profile", "Öffentliches Profil", "Profil public", "Perfil público", "公开资料", "公開プロフィール"),
]

TABS: list[Row] = [
    ("Overview", "Übersicht", "Aperçu", "Resumen", "概览", "概要"),
    ("Details", "Details", "Détails", "Detalles", "详情", "詳細"),
    ("Reviews", "Bewertungen", "Avis", "Reseñas", "评价", "レビュー"),
    ("Settings", "Einstellungen", "Réglages", "Ajustes", "设置", "設定"),
    ("Activity", "Aktivität", "Activité", "Actividad", "动态", "アクティビティ"),
    ("Files", "Dateien", "Fichiers", "Archivos", "文件", "ファイル"),
    ("Members", "Mitglieder", "Membres", "Miembros", "成员", "メンバー"),
]

LIST_TITLES: list[Row] = [
    ("Tasks", "Aufgaben", "Tâches", "Tareas", "任务", "タスク"),
    ("Recent files", "Letzte Dateien", "Fichiers récents", "Archivos recientes", "最近文件", "最近のファイル"),
    ("Notifications", "Mitteilungen", "Notifications", "Avisos", "通知", "お知らせ"),
    ("Favourites", "Favoriten", "Favoris", "Favoritos", "收藏", "お気に入り"),
]

LIST_ITEMS: list[Row] = [
    ("Pay invoice", "Rechnung bezahlen", "Payer la facture", "Pagar factura", "支付发票", "請求書を支払う"),
    ("Call the bank", "Bank anrufen", "Appeler la banque", "Llamar al banco", "给银行打电话", "銀行に電話"),
    ("Book flights", "Flüge buchen", "Réserver les vols", "Reservar vuelos", "预订机票", "航空券を予約"),
    ("Renew passport", "Pass verlängern", "Renouveler le passeport", "Renovar pasaporte", "更新护照", "パスポート更新"),
    ("Team meeting", "Teambesprechung", "Réunion d'équipe", "Reunión de equipo", "团队会议", "チーム会議"),
    ("Quarterly report", "Quartalsbericht", "Rapport trimestriel", "Informe trimestral", "季度报告", "四半期報告"),
    ("Water the plants", "Pflanzen gießen", "Arroser les plantes", "Regar las plantas", "给植物浇水", "植物に水やり"),
    ("Update website", "Webseite aktualisieren", "Mettre à jour le site", "Actualizar la web", "更新网站", "サイト更新"),
    ("Send contract", "Vertrag senden", "Envoyer le contrat", "Enviar contrato", "发送合同", "契約書を送る"),
    ("Order supplies", "Material bestellen", "Commander des fournitures", "Pedir material", "订购用品", "備品を注文"),
]

MENU_BUTTONS: list[Row] = [
    ("Account", "Konto", "Compte", "Cuenta", "账户", "アカウント"),
    ("More", "Mehr", "Plus", "Más", "更多", "その他"),
    ("Actions", "Aktionen", "Actions", "Acciones", "操作", "操作"),
    ("File", "Datei", "Fichier", "Archivo", "文件菜单", "ファイル操作"),
]

MENU_ITEMS: list[Row] = [
    ("Profile", "Profil", "Profil", "Perfil", "个人资料", "プロフィール"),
    ("Preferences", "Präferenzen", "Préférences", "Preferencias", "偏好", "環境設定"),
    ("Invoices", "Rechnungen", "Factures", "Facturas", "发票", "請求書"),
    ("Sign out", "Abmelden", "Déconnexion", "Cerrar sesión", "退出", "ログアウト"),
    ("Rename", "Umbenennen", "Renommer", "Renombrar", "重命名", "名前を変更"),
    ("Move to trash", "In den Papierkorb", "Mettre à la corbeille", "Mover a la papelera", "移到回收站", "ゴミ箱へ移動"),
    ("Keyboard shortcuts", "Tastenkürzel", "Raccourcis clavier", "Atajos de teclado", "快捷键", "ショートカット"),
]

DROPDOWNS: list[Row] = [
    ("Country", "Land", "Pays", "País", "国家", "国"),
    ("Language", "Sprache", "Langue", "Idioma", "语言", "言語"),
    ("Sort by", "Sortieren nach", "Trier par", "Ordenar por", "排序方式", "並べ替え"),
]

OPTIONS: list[list[str]] = [  # per dropdown row, language-neutral option texts
    ["Germany", "France", "Japan", "Brazil", "Canada", "India", "Kenya"],
    ["English", "Deutsch", "Français", "Español", "中文", "日本語"],
    ["Newest", "Oldest", "Price", "Rating", "Name"],
]

TABLE_HEADERS: list[Row] = [
    ("Name", "Name", "Nom", "Nombre", "名称", "名前"),
    ("Status", "Status", "Statut", "Estado", "状态", "状態"),
    ("Amount", "Betrag", "Montant", "Importe", "金额", "金額"),
]

STATUSES: list[Row] = [
    ("Paid", "Bezahlt", "Payé", "Pagado", "已支付", "支払済"),
    ("Pending", "Offen", "En attente", "Pendiente", "待处理", "保留中"),
    ("Failed", "Fehlgeschlagen", "Échoué", "Fallido", "失败", "失敗"),
]

DIALOGS: list[Row] = [
    ("Delete this file?", "Diese Datei löschen?", "Supprimer ce fichier ?", "¿Eliminar este archivo?", "删除此文件？", "このファイルを削除しますか？"),
    ("Discard changes?", "Änderungen verwerfen?", "Annuler les modifications ?", "¿Descartar cambios?", "放弃更改？", "変更を破棄しますか？"),
    ("Session expired", "Sitzung abgelaufen", "Session expirée", "Sesión caducada", "会话已过期", "セッション切れ"),
]

# Fixed words used by specific blocks: (confirm, cancel, submit, sign in, username, password,
# search, welcome, thanks, close, send)
COMMON: dict[str, Row] = {
    "confirm": ("Confirm", "Bestätigen", "Confirmer", "Confirmar", "确认", "確認"),
    "cancel": ("Cancel", "Abbrechen", "Annuler", "Cancelar", "取消", "キャンセル"),
    "submit": ("Submit", "Absenden", "Envoyer", "Enviar", "提交", "送信"),
    "sign_in": ("Sign in", "Anmelden", "Se connecter", "Iniciar sesión", "登录", "ログイン"),
    "username": ("Username", "Benutzername", "Identifiant", "Usuario", "用户名", "ユーザー名"),
    "password": ("Password", "Passwort", "Mot de passe", "Contraseña", "密码", "パスワード"),
    "search": ("Search", "Suchen", "Rechercher", "Buscar", "搜索", "検索"),
    "welcome": ("Welcome", "Willkommen", "Bienvenue", "Bienvenido", "欢迎", "ようこそ"),
    "thanks": ("Thank you, your form was sent.", "Danke, Ihr Formular wurde gesendet.",
               "Merci, votre formulaire a été envoyé.", "Gracias, su formulario fue enviado.",
               "谢谢，表单已提交。", "送信しました。ありがとうございます。"),
    "selected": ("You chose", "Ausgewählt", "Vous avez choisi", "Ha elegido", "已选择", "選択"),
}

SITE_NAMES = ["Acme", "Northwind", "Globex", "Initech", "Umbrella", "Hooli", "Vandelay", "Stark",
              "Wayne", "Tyrell", "Soylent", "Cyberdyne", "Aperture", "Gringotts", "Oscorp"]
PEOPLE = ["Anna Schmidt", "Lucas Martin", "Sofia García", "Wei Zhang", "Yuki Tanaka", "Omar Haddad",
          "Emma Johnson", "Noah Müller", "Lea Dubois", "Mateo López", "Aiko Sato", "Li Na",
          "Priya Patel", "Jonas Berg", "Chloé Bernard", "Diego Ruiz"]
CITIES = ["Berlin", "Paris", "Madrid", "Tokyo", "Beijing", "Toronto", "Nairobi", "Lima", "Oslo", "Seoul"]
USERNAMES = ["anna82", "lmartin", "sofia.g", "weiz", "yuki_t", "omarh", "emma.j", "noahm"]
